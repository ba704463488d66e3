"""Fleet-level privacy figures from the devices' train replies.

Flower's FedAvg weighted-averages every metric of the replies, which for epsilon is the wrong
summary: the guarantee a fleet can claim is the WORST device's epsilon. This reduces the DP-SGD
metrics of one round's replies (``clients.dp_trainer``'s keys) to the figures a report needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

EPSILON = "epsilon"
DELTA = "delta"
BUDGET_EXHAUSTED = "budget-exhausted"


def privacy_summary(replies: Iterable[Mapping[str, object]]) -> dict[str, float]:
    """Summarise the DP metrics of one round's train replies.

    Parameters
    ----------
    replies : iterable of mapping
        The metrics of each reply (a ``MetricRecord`` or dict); replies without ``epsilon``
        (non-private trainers) are skipped.

    Returns
    -------
    dict
        ``epsilon-max`` (the fleet's guarantee, at ``delta-max``), ``epsilon-mean``,
        ``private-devices`` and ``budget-exhausted-devices``; empty when no reply is private.
    """
    epsilons: list[float] = []
    deltas: list[float] = []
    exhausted = 0
    for metrics in replies:
        if EPSILON not in metrics:
            continue
        epsilons.append(_number(metrics, EPSILON, math.nan))
        deltas.append(_number(metrics, DELTA, math.nan))
        exhausted += int(_number(metrics, BUDGET_EXHAUSTED, 0.0) > 0)
    if not epsilons:
        return {}
    return {
        "epsilon-max": max(epsilons),
        "delta-max": max(deltas),
        "epsilon-mean": sum(epsilons) / len(epsilons),
        "private-devices": float(len(epsilons)),
        "budget-exhausted-devices": float(exhausted),
    }


def _number(metrics: Mapping[str, object], key: str, default: float) -> float:
    value = metrics.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"metric {key!r} must be a number, got {value!r}")
    return float(value)
