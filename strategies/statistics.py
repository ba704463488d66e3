"""Per-update statistics of one round, on the sampled coordinates.

Each update's cosine to the coordinate-wise median of the round's normalised updates, its
dispersion (how spread it is over the coordinates) and its distance to the nearest other
update; :mod:`strategies.scoring` turns them into signals and rejections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strategies.arrays import ModelSpec
from strategies.robust import row_median
from strategies.sample import SamplePlan, gather_sample

Z_CLIP = 3.0
"""Per-coordinate z-scores are clipped here before the dispersion's RMS (N(0, 1) gives ~0.98)."""

_PROJECTIONS = 4  # random projections whose sorted orders propose nearest-neighbour candidates
_WINDOW = 2  # neighbours on each side in each sorted order
_PAIR_BLOCK = 256  # candidate pairs whose distances are computed at once


@dataclass
class UpdateStatistics:
    """Per-device statistics of one round (rows follow the input order).

    ``nearest`` is the distance to the closest other update relative to the larger of the two
    norms (see :func:`nearest_relative_distance`); ``None`` when it was not computed.
    ``output_cosine`` is the output layer's cosine to its coordinate-wise median
    (:func:`output_layer_cosine`); ``None`` when not computed or the model has no 2-D array.
    """

    norms: np.ndarray
    cosine: np.ndarray
    dispersion: np.ndarray
    nearest: np.ndarray | None = None
    output_cosine: np.ndarray | None = None


def update_statistics(
    sample: np.ndarray,
    norms: np.ndarray,
    seed: int | Sequence[int] = 0,
    *,
    with_nearest: bool = True,
) -> UpdateStatistics:
    """Cosine, dispersion and nearest-neighbour distance of each sampled update.

    Parameters
    ----------
    sample : np.ndarray
        ``(k, n)`` sampled update coordinates, one column per device (from
        :func:`~strategies.sample.gather_sample`). Overwritten.
    norms : np.ndarray
        ``(n,)`` full update norms, passed through.
    seed : int or sequence of int
        Seed of the random projections that pick nearest-neighbour candidates.
    with_nearest : bool
        Whether to compute the nearest-neighbour distances (``nearest`` is ``None`` otherwise).

    Returns
    -------
    UpdateStatistics
        Cosine in ``[-1, 1]`` (0 for a zero update or reference); dispersion (RMS of the robust
        per-coordinate z-scores of the normalised update, each clipped at :data:`Z_CLIP`; NaN
        where no coordinate has spread); relative nearest-neighbour distance.
    """
    n = sample.shape[1]
    unit = sample  # normalised in place: no second k×n buffer
    row_norms = _normalise_columns(unit)
    nearest = nearest_relative_distance(unit, row_norms, seed) if with_nearest else None
    reference, cosine = _cosine_to_median(unit)
    # |unit - reference| in place: the k×n buffer is reused instead of copied.
    deviation = np.abs(np.subtract(unit, reference[:, None], out=unit), out=unit)
    mad = 1.4826 * row_median(deviation.copy())
    spread = mad > 0
    if spread.any():
        # Coordinates where (almost) every device agrees, such as units no device's data
        # activates, would turn one device's ordinary value there into an enormous z-score: the
        # scale is floored at a tenth of the typical coordinate's, and each z is clipped, so the
        # statistic measures how spread an update is over all coordinates, not its tails.
        floor = 0.1 * float(np.median(mad[spread]))
        z = np.divide(deviation, np.maximum(mad, floor)[:, None], out=deviation)
        np.minimum(z, Z_CLIP, out=z)
        dispersion = np.sqrt(np.mean(np.square(z, out=z), axis=0, dtype=np.float64))
    else:
        dispersion = np.full(n, np.nan)
    return UpdateStatistics(
        norms=np.asarray(norms, dtype=np.float64),
        cosine=cosine,
        dispersion=dispersion.astype(np.float64),
        nearest=nearest,
    )


def output_layer_cosine(
    updates: Sequence[dict[str, np.ndarray]],
    spec: ModelSpec,
    size: int,
    seed: int,
    server_round: int,
) -> np.ndarray | None:
    """Cosine of each update's output layer to the coordinate-wise median of the round.

    The layer is :meth:`~strategies.sample.SamplePlan.output_layer`'s; ``None`` when the model has
    no 2-D array.
    """
    plan = SamplePlan.output_layer(spec, size, seed, server_round)
    if plan is None:
        return None
    return median_cosine(gather_sample(updates, spec, plan))


def median_cosine(sample: np.ndarray) -> np.ndarray:
    """Cosine of each column of ``(k, n)`` to the coordinate-wise median of the unit columns.

    0 for a zero column or a zero median. ``sample`` is not modified.
    """
    unit = sample.copy()
    _normalise_columns(unit)
    return _cosine_to_median(unit)[1]


def _normalise_columns(sample: np.ndarray) -> np.ndarray:
    """Scale each column of ``sample`` to unit norm in place (zero columns stay zero); the norms."""
    norms = np.linalg.norm(sample, axis=0)
    sample /= np.where(norms > 0, norms, 1.0).astype(sample.dtype)
    return norms


def _cosine_to_median(unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The coordinate-wise median of the unit columns, and each column's cosine to it.

    The cosine is in ``[-1, 1]``, and 0 for every column when the median is zero.
    """
    reference = row_median(unit.copy())
    ref_norm = float(np.linalg.norm(reference))
    if ref_norm == 0:
        return reference, np.zeros(unit.shape[1])
    return reference, np.clip((reference @ unit / ref_norm).astype(np.float64), -1.0, 1.0)


def nearest_relative_distance(
    unit: np.ndarray, sample_norms: np.ndarray, seed: int | Sequence[int] = 0
) -> np.ndarray:
    """Distance from each update to its nearest other update, relative to the larger norm.

    ``r_i = min_j ||u_i - u_j|| / max(||u_i||, ||u_j||)`` on the sampled coordinates: 0 for an
    exact copy of another device's update, near 0 for a near-copy, and for honest devices (whose
    data differ) a sizeable fraction of the typical nearest distance. Scale-free, so small honest
    updates (devices whose data the model already fits) are not "close" to each other merely
    because they are small.

    Candidates come from sorting: the normalised updates are projected on
    :data:`_PROJECTIONS` seeded random directions and each update is compared with its
    :data:`_WINDOW` neighbours on either side of every sorted order. Copies share every projection,
    so they are always adjacent; cost O(n·k) for the projections and the comparisons, plus
    O(n log n) for the sorts, instead of O(n²·k) for all pairs.

    Parameters
    ----------
    unit : np.ndarray
        ``(k, n)`` normalised sampled updates (zero columns for zero updates). Not modified.
    sample_norms : np.ndarray
        ``(n,)`` norms of the sampled updates before normalisation.
    seed : int or sequence of int
        Seed of the projections.

    Returns
    -------
    np.ndarray
        ``(n,)`` float64; NaN for a zero update and when there is no other update.
    """
    k, n = unit.shape
    nearest = np.full(n, np.inf)
    if n < 2:
        return np.full(n, np.nan)
    directions = np.random.default_rng(seed).standard_normal((_PROJECTIONS, k), dtype=np.float32)
    projections = directions @ unit  # (P, n)
    keys = []
    for row in projections:
        order = np.argsort(row, kind="stable")
        for offset in range(1, min(_WINDOW, n - 1) + 1):
            first, second = order[:-offset], order[offset:]
            keys.append(np.minimum(first, second) * n + np.maximum(first, second))
    unique = np.unique(np.concatenate(keys))
    pair_array = np.stack([unique // n, unique % n], axis=1)
    rows = np.ascontiguousarray(unit.T)  # one contiguous row per update
    scaled_norms = np.asarray(sample_norms, dtype=np.float32)
    for start in range(0, len(pair_array), _PAIR_BLOCK):
        a, b = pair_array[start : start + _PAIR_BLOCK].T
        na, nb = scaled_norms[a, None], scaled_norms[b, None]
        diff = rows[a] * na - rows[b] * nb
        distance = np.linalg.norm(diff, axis=1).astype(np.float64)
        larger = np.maximum(na[:, 0], nb[:, 0]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            relative = np.where(larger > 0, distance / larger, np.inf)  # two zero updates: none
        np.minimum.at(nearest, a, relative)
        np.minimum.at(nearest, b, relative)
    nearest[~np.isfinite(nearest)] = np.nan
    nearest[np.asarray(sample_norms) == 0] = np.nan
    return nearest
