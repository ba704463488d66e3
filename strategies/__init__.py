"""Trusted aggregation for Flower's Message API: reliability weighting and anomaly rejection.

Usable in any Flower app by import alone::

    from strategies import AnomalyRejection, ReliabilityWeightedFedAvg

    strategy = AnomalyRejection(ReliabilityWeightedFedAvg(min_available_nodes=10))
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=5)
    report = strategy.round_report(5)  # who was rejected and why, per-device weights

- :class:`ReliabilityWeightedFedAvg`: FedAvg weighted by bounded quantity × quality ×
  reliability, robust to malformed replies.
- :class:`AnomalyRejection`: wraps any ``Strategy`` and rejects outlying updates (norm, direction,
  dispersion, claimed count) before it aggregates.
- :class:`ReliabilityTracker`: per-device history with decay, serialisable.

The math lives in module-level functions (:mod:`strategies.scoring`, :mod:`strategies.weighting`,
:mod:`strategies.arrays`); the strategies are thin layers over Flower's API.
"""

from strategies.anomaly import AnomalyRejection
from strategies.reliability import OUTCOMES, ReliabilityTracker
from strategies.reliability_fedavg import ReliabilityWeightedFedAvg
from strategies.report import DEVICE_KEYS
from strategies.scoring import (
    SIGNALS,
    AnomalyScores,
    AnomalyThresholds,
    agreement_quality,
    anomaly_scores,
    robust_center_scale,
    update_statistics,
)
from strategies.weighting import bounded_quantity, combine_weights

__all__ = [
    "DEVICE_KEYS",
    "OUTCOMES",
    "SIGNALS",
    "AnomalyRejection",
    "AnomalyScores",
    "AnomalyThresholds",
    "ReliabilityTracker",
    "ReliabilityWeightedFedAvg",
    "agreement_quality",
    "anomaly_scores",
    "bounded_quantity",
    "combine_weights",
    "robust_center_scale",
    "update_statistics",
]
