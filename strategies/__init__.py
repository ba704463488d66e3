"""Trusted aggregation for Flower's Message API: reliability weighting and anomaly rejection.

Usable in any Flower app by import alone::

    from strategies import AnomalyRejection, ReliabilityWeightedFedAvg

    strategy = AnomalyRejection(ReliabilityWeightedFedAvg(min_available_nodes=10))
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=5)
    report = strategy.round_report(5)  # a RoundReport: who was rejected and why, weights

(``examples/plain_flower/app.py`` is a complete app.) In fl-iot, pick ``strategy=trusted``
(``conf/strategy/trusted.yaml``) or ``strategy=reliability`` (weighting only).

Classes
-------
:class:`AnomalyRejection`
    Wraps any ``Strategy``. Rejects malformed replies and outlying updates, records every
    device's outcome in a :class:`ReliabilityTracker`, and lets the wrapped strategy aggregate the
    rest. Never raises on a bad reply.
:class:`ReliabilityWeightedFedAvg`
    FedAvg weighted by ``bounded quantity × quality × reliability``; rejects malformed replies.
:class:`ReliabilityTracker`
    Per-device history (completed, late, failed, anomalous; mean direction) with decay;
    plain-dict state.

Signals, and what each one catches
----------------------------------
All of them are computed by the server from the update itself, relative to robust statistics of
the round (reweighted shortest half, not mean/std), at O(n·d) per round:

============================ ================================================================
signal                       catches
============================ ================================================================
malformed (structure, NaN,   NaN/Inf, wrong keys/shapes/dtypes, extra or missing records,
Inf, overflow)               missing/negative/non-numeric counts, error replies
norm (log L2 of x − g)       large Gaussian noise, absurd values, gross boosting
direction (cosine to the     sign flip, IPM (−ε·mean), label flip, when they stand out from
coordinate-wise median of    the round's own spread (see the limits below)
normalised updates, on a
seeded coordinate sample)
output-layer direction       label flip (Tolpegin et al. 2020: it shows in the flipped classes'
(the same, on the last       output neurons, a few hundred coordinates the whole-model sample
2-D array and after it)      drowns). Logged, and feeds quality and history; never rejects
dispersion (RMS of clipped   updates crafted onto the coordinate-wise centre of every
robust per-coord. z-scores)  coordinate (mimicry); a dormant safety net on real fleets
duplicate (nearest other     colluders that send one crafted vector: ALIE, IPM, sybils.
update, relative to norms)   Devices train on different data, so honest updates are never copies
count (claimed / median)     weight inflation; the weight itself is also capped (quantity)
============================ ================================================================

Weights: *quantity* is the claimed count capped at ``quantity_cap × median`` (a liar gains at most
the cap); *quality* is the device's agreement with the robust reference, the lower of the two
direction z-scores as a decayed mean over the device's rounds (1 for the bulk, down to
``min_quality`` for devices that keep pointing away; no self-reported value is trusted; in a
round where colluders' copies were refused, judged among the accepted updates, see
:class:`AnomalyRejection`'s ``rescore_accepted``);
*reliability* is a decayed beta-reputation of the device's history, with lateness and failures
penalised less than anomalies (IoT devices drop out for battery and network reasons). Every
accepted update is then bounded to ``clip_ratio × median`` update norm: boosted updates that no
per-round statistic can single out move the model by at most a few typical updates.

What real non-IID fleets look like (MIT-BIH, one device per patient): honest update norms spread
over two orders of magnitude (a patient whose beats the model already fits sends a tiny update,
which is ordinary, not suspicious), cosines to the consensus range from −0.3 to 0.85, and many
coordinates are exactly zero for a given device (ReLUs its data never activates). Hence: norms
are bounded rather than z-tested alone, dispersion uses floored scales and clipped z-scores, and
"too close" is measured against other devices (copies), not against the centre.

Limits: per-update statistics of one round cannot separate label flippers from honest devices
with a different label mix, and when the flippers are numerous in a round (6-7 of 23 sampled on
healthcare_wearables at 20 %) they push one coherent direction while honest non-IID updates
spread out, so they shape the round's median itself. Judging each device by its mean direction
over its rounds is what contains them (they are at the bottom of nearly every round, honest
outliers only of some); it needs a few rounds of history, and at 40 % flippers the reference
itself is theirs too often. A single colluder, or colluders that add independent noise to their
vector, are not copies; they are then only bounded (norm) and weighted (quality). Statistical
rejection needs ``min_replies`` (3) well-formed replies, the dispersion and copy signals
``min_replies_dispersion`` (10), and robust statistics assume an honest majority (at most
``max_reject_fraction`` is rejected).

Identity: a reply is charged to the node its message was sent to (``reply_to_message_id``, so
the SuperLink's error reply for a dead node too: :func:`answered_node`), and that node is a device
through the roster given to ``set_roster(roster)`` (``{node_id: device_key}``); without one,
devices are node ids. What a reply says about itself is never its identity: a claim that differs
from the roster is rejected as a spoof (:mod:`strategies.validation`).

The math lives in module-level functions (:mod:`strategies.scoring` over
:mod:`strategies.statistics`, :mod:`strategies.sample` and :mod:`strategies.robust`;
:mod:`strategies.weighting`, :mod:`strategies.arrays`, :mod:`strategies.validation`); the strategies
are thin layers over Flower's API, and round reports follow :mod:`strategies.report`.
"""

from strategies.anomaly import AnomalyRejection
from strategies.central_dp import CentralDP
from strategies.decoding import DecodedUpdates
from strategies.reliability import OUTCOMES, Outcome, ReliabilityTracker
from strategies.reliability_fedavg import ReliabilityWeightedFedAvg
from strategies.report import DEVICE_KEYS, DeviceReport, RoundReport
from strategies.robust import robust_center_scale
from strategies.scoring import SIGNALS, AnomalyScores, agreement_quality, anomaly_scores
from strategies.statistics import update_statistics
from strategies.thresholds import AnomalyThresholds
from strategies.validation import RejectionKind, answered_node, sent_destinations
from strategies.weighting import bounded_quantity, combine_weights

__all__ = [
    "DEVICE_KEYS",
    "OUTCOMES",
    "SIGNALS",
    "AnomalyRejection",
    "AnomalyScores",
    "AnomalyThresholds",
    "CentralDP",
    "DecodedUpdates",
    "DeviceReport",
    "Outcome",
    "RejectionKind",
    "ReliabilityTracker",
    "ReliabilityWeightedFedAvg",
    "RoundReport",
    "agreement_quality",
    "anomaly_scores",
    "answered_node",
    "bounded_quantity",
    "combine_weights",
    "robust_center_scale",
    "sent_destinations",
    "update_statistics",
]
