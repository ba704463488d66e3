"""The keys and message shapes the ServerApp and the ClientApp agree on.

A train reply carries these records::

    "arrays"  ArrayRecord   the updated weights (state-dict keys of the original module)
    "metrics" MetricRecord  num-examples, train-loss, train-steps, compute-time-s, wall-time-s
                            (the same keys from every trainer)
    "trainer" ConfigRecord  trainer-specific scalars: epsilon, delta, noise-multiplier, ... for
                            DP-SGD; absent when the trainer reports none (the standard trainer)
    "device"  ConfigRecord  device-id (the server knows each device's class from the federation)

Every record costs a reply its own bytes plus ~150 in Flower's record dict (the entry that names
it by its 64-hex-digit object id), which a compressed update of 1 kB notices: a reply carries no
empty record and nothing the server already knows.

An evaluate reply carries "metrics" (num-examples, loss, confusion) and "device". Identity and
trainer-specific values live in ConfigRecords: Flower's strategies weighted-average every entry of
the MetricRecord and refuse replies whose MetricRecords have different keys, so a fleet mixing
private and non-private devices must keep the MetricRecord uniform (and an averaged epsilon would
hide the worst device's).

A device is not a Flower node: the server maps ``metadata.src_node_id`` to a device id with a roll
call (a ``query`` message) before the first round.
"""

from __future__ import annotations

from strategies.decoding import UNDECODABLE_ERROR_CODE
from strategies.validation import DEVICE_ID_KEY, DEVICE_RECORD

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
DEVICE = DEVICE_RECORD  # the strategies read the claimed device there
TRAINER = "trainer"

NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_STEPS = "train-steps"
COMPUTE_TIME = "compute-time-s"
WALL_TIME = "wall-time-s"
EVAL_LOSS = "loss"
CONFUSION = "confusion"

DEVICE_ID = DEVICE_ID_KEY
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"

UPDATE = "update"
"""ConfigRecord of a train reply that offers a partial update: ``base-round``, ``partial-steps``.

A ConfigRecord, not metrics: Flower's strategies refuse replies whose MetricRecords differ in keys.
"""
BASE_ROUND = "base-round"
PARTIAL_STEPS = "partial-steps"

CUTOFF_STEPS = "fleet-cutoff-steps"
"""Train config of the simulated fleet: the device goes offline after this many local steps.

Only the simulated clock sets it (:mod:`fl_iot.schedule`); a real device loses power or signal
by itself. The device keeps the partial update in its state.
"""
PARTIAL_UPDATES = "partial-updates"
"""Train config: ``use`` lets a device with a kept partial update reply with it instead of
training afresh (the server re-bases and staleness-weights it); absent or ``drop``: discard it."""

DECLINED_ERROR_CODE = 4201
"""Error code of a train reply from a device that declined to train (e.g. privacy budget spent)."""

OFFLINE_ERROR_CODE = 4202
"""Error code a simulated device replies with when it went offline mid-training (a real one is
simply never heard from; the simulation needs the reply to free its worker)."""

MALFORMED_UPDATE_ERROR_CODE = UNDECODABLE_ERROR_CODE
"""Error code the server gives a train reply whose compressed update it could not decode (the
reply is refused before any strategy sees it; the code of :class:`strategies.DecodedUpdates`)."""

GATEWAY_ERROR_CODE = 4204
"""Error code the server gives a device behind a gateway whose reply lacks that device's answer
(a malformed gateway reply, or one that skips a device it was asked for)."""

ROLL_CALL = "query.roll_call"
"""Message type of the roll call that maps Flower node ids to device ids."""
