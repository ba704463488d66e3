"""Aggregation weights: bounded data quantity × data quality × reliability.

Each factor is a pure function of server-side evidence, so the weights can be reproduced from a
round report and tested by hand.
"""

from __future__ import annotations

import math
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


def norm_clip_factors(norms: np.ndarray, ratio: float | None) -> np.ndarray:
    """Factors that shrink each update to at most ``ratio`` times the round's median norm.

    Norm bounding (Sun et al., "Can you really backdoor federated learning?", 2019): an accepted
    update moves the model by at most ``ratio`` typical updates, whatever its claimed count,
    quality or reliability. It is what contains boosted updates that per-round statistics cannot
    single out: on non-IID data honest norms spread over two orders of magnitude (a patient whose
    beats the model already fits sends a tiny update), so a ×10 boost of a small update looks
    ordinary. Honest updates are rarely affected (above 3× the median is a few per cent of them).

    Parameters
    ----------
    norms : np.ndarray
        L2 norms of the accepted updates ``x_i - g``.
    ratio : float or None
        Multiple of the median norm (> 0); ``None``: no bound (all factors 1).

    Returns
    -------
    np.ndarray
        ``min(1, ratio · median(norms) / norm_i)`` as float64; 1 for zero updates.

    Examples
    --------
    >>> norm_clip_factors(np.array([1.0, 2.0, 3.0, 30.0]), ratio=3.0).tolist()
    [1.0, 1.0, 1.0, 0.25]
    """
    norms = np.asarray(norms, dtype=np.float64)
    factors = np.ones_like(norms)
    if ratio is None or norms.size == 0:
        return factors
    bound = ratio * float(np.median(norms))
    large = norms > bound
    factors[large] = bound / norms[large]
    return factors


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


def cap_shares(weights: np.ndarray, max_share: float) -> np.ndarray:
    """Weights normalised to sum to 1 with no share above ``max_share``.

    Shares above the cap are set to it and the excess goes to the others in proportion to their
    weights, repeatedly, until none is above (water-filling). A bounded share is what bounds the
    sensitivity of a weighted mean: under central DP one device's clipped update of norm ``C``
    moves the aggregate by at most ``max_share · C``.

    Parameters
    ----------
    weights : np.ndarray
        Non-negative unnormalised weights; all zero means equal shares.
    max_share : float
        Largest share, with ``max_share · len(weights) >= 1`` so that the shares can sum to 1.

    Returns
    -------
    np.ndarray
        The capped shares, float64, summing to 1 (empty for no weights).

    Examples
    --------
    >>> cap_shares(np.array([6.0, 1.0, 1.0, 1.0, 1.0]), max_share=0.3).round(3).tolist()
    [0.3, 0.175, 0.175, 0.175, 0.175]
    """
    weights = np.asarray(weights, dtype=np.float64)
    n = weights.size
    if n == 0:
        return weights
    if max_share * n < 1.0 - 1e-12:
        raise ValueError(f"max_share {max_share!r} cannot hold {n} shares summing to 1")
    if weights.sum() <= 0:
        weights = np.ones(n)
    shares = weights / weights.sum()
    capped = np.zeros(n, dtype=bool)
    while (over := (shares > max_share) & ~capped).any():
        capped |= over
        free = ~capped
        rest = 1.0 - max_share * capped.sum()
        shares[capped] = max_share
        if not free.any():
            break
        free_total = weights[free].sum()
        shares[free] = weights[free] / free_total * rest if free_total > 0 else rest / free.sum()
    return shares


def weighted_metrics(
    records: Sequence[Mapping[str, Any]], weights: Sequence[float], keys: Sequence[str]
) -> dict[str, float | list[float]]:
    """Weighted average of the metric ``keys`` (scalars or equal-length lists), like Flower's.

    The same arithmetic, in the same order, as ``flwr.serverapp.strategy.strategy_utils.
    aggregate_metricrecords``, without building a ``RecordDict`` per reply, except for
    non-finite values: a reply whose value of a key is NaN or Inf (a list: any element) is left
    out of that key's average, and the other replies' values are averaged with their weights
    renormalised among them. One diverged or lying device must not turn a round's ``train-loss``
    into NaN, and must not remove it either. A key that no reply reports finitely is omitted.

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
    finite = {key: [is_finite_metric(record[key]) for record in records] for key in keys}
    totals = {
        key: float(sum(w for w, ok in zip(weights, flags, strict=True) if ok))
        for key, flags in finite.items()
    }
    result: dict[str, float | list[float]] = {}
    for i, (record, weight) in enumerate(zip(records, weights, strict=True)):
        for key in keys:
            if not finite[key][i] or totals[key] <= 0:
                continue
            factor = float(weight) / totals[key]
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
    return {key: result[key] for key in keys if key in result}


def is_finite_metric(value: Any) -> bool:
    """Whether a metric value (a number or a list of numbers) holds only finite numbers."""
    if isinstance(value, list):
        return all(math.isfinite(v) for v in value)
    return math.isfinite(value)
