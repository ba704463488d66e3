"""Aggregation weights: bounded data quantity × data quality × reliability.

Each factor is a pure function of server-side evidence, so the weights can be reproduced from a
round report and tested by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def bounded_quantity(counts: np.ndarray, cap: float) -> np.ndarray:
    """Claimed sample counts, capped at ``cap`` times the round's median count.

    The cap is what makes self-reported counts safe to use: a device that lies about its count
    ("weight inflation", Portnoy et al. 2022) gains at most ``cap`` median devices' worth of weight,
    and the median itself only moves if most devices lie.

    Parameters
    ----------
    counts : np.ndarray
        Positive claimed sample counts of the accepted replies.
    cap : float
        Multiple of the median, >= 1.

    Returns
    -------
    np.ndarray
        ``min(count_i, cap · median(counts))`` as float64.

    Examples
    --------
    >>> bounded_quantity(np.array([10.0, 20.0, 30.0, 1000.0]), cap=2.0).tolist()
    [10.0, 20.0, 30.0, 50.0]
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size == 0:
        return counts
    return np.minimum(counts, cap * float(np.median(counts)))


def combine_weights(
    quantity: np.ndarray, quality: np.ndarray, reliability: np.ndarray
) -> np.ndarray:
    """Unnormalised aggregation weights ``quantity · quality · reliability``.

    A product (not a sum) so that each factor scales a device's influence on its own: halving
    reliability halves the weight whatever the device's data size.
    """
    return (
        np.asarray(quantity, dtype=np.float64)
        * np.asarray(quality, dtype=np.float64)
        * np.asarray(reliability, dtype=np.float64)
    )


def weighted_metrics(
    records: Sequence[Mapping[str, Any]], weights: Sequence[float], keys: Sequence[str]
) -> dict[str, float | list[float]]:
    """Weighted average of the metric ``keys`` (scalars or equal-length lists), like Flower's.

    The same arithmetic, in the same order, as ``flwr.serverapp.strategy.strategy_utils.
    aggregate_metricrecords``, without building a ``RecordDict`` per reply.

    Parameters
    ----------
    records : Sequence[Mapping[str, Any]]
        One metric mapping per reply; every key in ``keys`` is present in every record with the
        same form (see :func:`strategies.validation.common_metric_keys`).
    weights : Sequence[float]
        Non-negative weights with a positive sum.
    keys : Sequence[str]
        The metrics to average.
    """
    total = float(sum(weights))
    result: dict[str, float | list[float]] = {}
    for record, weight in zip(records, weights, strict=True):
        factor = float(weight) / total
        for key in keys:
            value = record[key]
            if key not in result:
                result[key] = (
                    [v * factor for v in value] if isinstance(value, list) else value * factor
                )
            elif isinstance(value, list):
                current = result[key]
                assert isinstance(current, list)
                result[key] = [c + v * factor for c, v in zip(current, value, strict=True)]
            else:
                result[key] = float(result[key]) + value * factor  # type: ignore[arg-type]
    return result
