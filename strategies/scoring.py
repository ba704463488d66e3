"""Robust per-update statistics and anomaly scores, in O(n·d) per round.

Every signal compares one update with a robust picture of the round, never with the mean that
attackers can pull:

``norm``
    The full L2 norm of the update ``x_i - g`` (one streaming pass over all parameters, see
    :func:`strategies.arrays.squared_update_norms`), as a robust z-score of its logarithm.
    Catches boosted/scaled updates, large Gaussian noise, absurd values.
``direction``
    Cosine between the device's update and the coordinate-wise median of the round's
    norm-normalised updates, on a seeded random sample of coordinates (the median of ``n`` rows
    of ``k`` sampled coordinates costs O(n·k), not O(n·d)). Its robust z-score catches sign flips,
    IPM (``-ε·mean``), Gaussian noise and many label flips.
``output_direction``
    The same on the output layer alone (:meth:`SamplePlan.output_layer`), where label flips show
    most. It does not reject; with ``direction`` it makes the :func:`agreement_z` that the
    weighting's quality and each device's direction history use.
``dispersion``
    RMS of the per-coordinate robust z-scores of the normalised update (coordinate median and MAD
    over the devices; the MAD floored at a tenth of the typical coordinate's and each z clipped
    at 3, so coordinates that almost every device leaves at zero, such as ReLUs dead for their
    data, cannot dominate). A genuine local update is noisy on every coordinate; an update crafted
    to sit on the centre of *all* coordinates has a small fraction of the typical dispersion. On
    real non-IID fleets honest sparse updates reach ~0.25× the median, and ALIE built from the
    colluders' own (widely spread) updates is not central at all, hence the low default.
``duplicate``
    Distance to the nearest other update relative to the larger norm, over the round's median
    (:func:`nearest_relative_distance`, O(n·k) on the sampled coordinates via sorted random
    projections). Devices train on different data, so honest updates are never copies (≥ 0.4× the
    median on MIT-BIH and the vehicle fleet); colluders that send one crafted vector (ALIE, IPM,
    sybils) are at 0.
``count``
    The claimed sample count over the round's median: weight inflation.

Robust location and scale use the reweighted shortest half (Rousseeuw's LMS location with one
reweighting step): the densest half of the values fixes the centre, then mean and standard
deviation of the points within 2.5 scales refine it. Unlike median/MAD, this does not inflate the
scale when 40 % of the values sit far on one side, which is what lets the thresholds hold at
40 % attackers. Floors on each scale keep an unusually homogeneous round from turning small
differences into rejections (see :class:`AnomalyThresholds`).

In a small round (fewer than ``min_replies_dispersion`` replies) a direction outlier that is no
copy of another update must also pull the model back (:func:`backward_pull`): there the shortest
half holds at most five cosines, and a non-IID device with little left to learn sends a small
update of its own direction that sits as many scales below the most similar devices as a sign
flipper does; the two differ in how much of a typical update they would undo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from strategies.arrays import ArraySpec, ModelSpec

_Z75 = 0.6744897501960817  # Φ⁻¹(0.75): half-width of the shortest half of N(0, 1)
_GATHER_BLOCK = 64  # updates gathered per block before the transpose into the (k, n) matrix
_TILE = 256  # coordinates per transposed tile (64 × 256 float32 = 64 KiB)


def _truncation_consistency(cut: float) -> float:
    """Factor that turns the SD of N(0,1) truncated at ±cut back into 1."""
    pdf = math.exp(-0.5 * cut * cut) / math.sqrt(2 * math.pi)
    mass = math.erf(cut / math.sqrt(2))
    return 1.0 / math.sqrt(1.0 - 2.0 * cut * pdf / mass)


def robust_center_scale(
    values: np.ndarray, floor: float = 0.0, relative_floor: float = 0.0, cut: float = 2.5
) -> tuple[float, float]:
    """Reweighted shortest-half estimate of location and scale.

    Parameters
    ----------
    values : np.ndarray
        One value per device; non-finite values are ignored.
    floor : float
        Smallest scale returned.
    relative_floor : float
        Smallest scale as a fraction of ``|centre|``.
    cut : float
        Points within ``cut`` scales of the shortest-half centre form the reweighted estimate.

    Returns
    -------
    tuple[float, float]
        ``(centre, scale)``; ``(nan, nan)`` when no value is finite. The scale is consistent
        for normal data and tolerates up to half of the values being arbitrary.
    """
    x = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
    n = len(x)
    if n == 0:
        return math.nan, math.nan

    def floored(center: float, scale: float) -> float:
        return max(scale, floor, relative_floor * abs(center))

    h = n // 2 + 1
    widths = x[h - 1 :] - x[: n - h + 1]
    j = int(np.argmin(widths))  # first minimum: deterministic for ties
    center = float(np.median(x[j : j + h]))
    # Rousseeuw & Leroy's finite-sample correction of the shortest-half scale: with a handful of
    # devices the shortest half is tighter than the population's, which would flag honest ones.
    small_sample = 1.0 + 5.0 / (n - 1) if n > 1 else 1.0
    scale = floored(center, small_sample * float(widths[j]) / (2 * _Z75))
    inliers = x[np.abs(x - center) <= cut * scale]
    if len(inliers) >= 2:
        center = float(inliers.mean())
        scale = floored(center, float(inliers.std()) * _truncation_consistency(cut))
    return center, scale


@dataclass(frozen=True)
class SamplePlan:
    """Which coordinates of the floating-point arrays the per-round statistics look at."""

    parts: tuple[tuple[str, np.ndarray, slice], ...]
    size: int

    @classmethod
    def draw(cls, spec: ModelSpec, size: int, seed: int, server_round: int) -> SamplePlan:
        """Draw ``size`` distinct coordinates (all of them if the model is smaller).

        The draw depends on ``seed`` and the round only, so every strategy instance of a run
        samples the same coordinates, and an attacker cannot know them in advance.
        """
        return cls._over(spec.float_arrays, size, [seed, server_round])

    @classmethod
    def output_layer(
        cls, spec: ModelSpec, size: int, seed: int, server_round: int
    ) -> SamplePlan | None:
        """Up to ``size`` coordinates of the output layer: the last 2-D float array and after.

        For a classifier that is the last ``Linear``'s weight and bias, where a label flip shows
        most (Tolpegin et al., ESORICS'20, find the flipped classes' output neurons); in the
        whole-model sample those few coordinates are drowned. All of them when the layer is
        small, else a seeded draw, as in :meth:`draw`. ``None`` when no float array is 2-D.
        """
        floats = spec.float_arrays
        last = max((i for i, a in enumerate(floats) if len(a.shape) == 2), default=None)
        if last is None:
            return None
        return cls._over(floats[last:], size, [seed, server_round, 1])

    @classmethod
    def _over(cls, arrays: Sequence[ArraySpec], size: int, seed: list[int]) -> SamplePlan:
        """``size`` distinct coordinates of ``arrays`` drawn with ``seed`` (all if fewer)."""
        total = sum(a.size for a in arrays)
        if total <= size:
            chosen = np.arange(total, dtype=np.int64)
        else:
            rng = np.random.default_rng(seed)
            chosen = np.sort(rng.choice(total, size=size, replace=False))
        parts: list[tuple[str, np.ndarray, slice]] = []
        offset = pos = 0
        for arr in arrays:
            lo = int(np.searchsorted(chosen, offset))
            hi = int(np.searchsorted(chosen, offset + arr.size))
            if hi > lo:
                parts.append((arr.key, chosen[lo:hi] - offset, slice(pos, pos + hi - lo)))
                pos += hi - lo
            offset += arr.size
        return cls(tuple(parts), pos)


def gather_sample(
    updates: Sequence[dict[str, np.ndarray]], spec: ModelSpec, plan: SamplePlan
) -> np.ndarray:
    """The sampled coordinates of every update ``x_i - g``, as a ``(k, n)`` float32 matrix.

    One column per update: the robust statistics take medians over devices, i.e. along rows,
    which is fast on contiguous memory (see :func:`row_median`).
    """
    n = len(updates)
    out = np.empty((plan.size, n), dtype=np.float32)
    # Gather a block of updates row-wise, then transpose it into place tile by tile: writing one
    # column at a time, or transposing whole rows, touches a new cache line per coordinate.
    block = np.empty((min(n, _GATHER_BLOCK), plan.size), dtype=np.float32)
    for first in range(0, n, _GATHER_BLOCK):
        chunk = updates[first : first + _GATHER_BLOCK]
        m = len(chunk)
        for j, update in enumerate(chunk):
            for key, idx, cols in plan.parts:
                block[j, cols] = update[key][idx]
        for c in range(0, plan.size, _TILE):
            out[c : c + _TILE, first : first + m] = block[:m, c : c + _TILE].T
    if spec.global_views is not None:
        for key, idx, rows in plan.parts:
            out[rows] -= spec.global_views[key][idx].astype(np.float32)[:, None]
    return out


def row_median(columns: np.ndarray) -> np.ndarray:
    """Median of each row of a ``(k, n)`` matrix (per coordinate, over devices), in place.

    ``np.median(x, axis=0)`` on an ``(n, k)`` matrix partitions strided columns and, for even ``n``,
    with two pivots; one pivot on contiguous rows is about 25× faster at ``n = 1000``. For even
    ``n`` the lower middle value is the maximum of the partitioned lower half.
    """
    n = columns.shape[1]
    half = n // 2
    columns.partition(half, axis=1)
    upper = columns[:, half]
    if n % 2:
        return upper.copy()
    return (columns[:, :half].max(axis=1) + upper) * 0.5


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


def output_layer_cosine(
    updates: Sequence[dict[str, np.ndarray]],
    spec: ModelSpec,
    size: int,
    seed: int,
    server_round: int,
) -> np.ndarray | None:
    """Cosine of each update's output layer to the coordinate-wise median of the round.

    The layer is :meth:`SamplePlan.output_layer`'s; ``None`` when the model has no 2-D array.
    """
    plan = SamplePlan.output_layer(spec, size, seed, server_round)
    if plan is None:
        return None
    return median_cosine(gather_sample(updates, spec, plan))


def agreement_z(direction_z: np.ndarray, output_direction_z: np.ndarray) -> np.ndarray:
    """The direction z-score that agreement quality and device history use.

    The lower of the whole update's and the output layer's (either alone where the other is NaN).
    """
    return np.fmin(direction_z, output_direction_z)


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
        :func:`gather_sample`). Overwritten.
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


Z_CLIP = 3.0
"""Per-coordinate z-scores are clipped here before the dispersion's RMS (N(0, 1) gives ~0.98)."""

_PROJECTIONS = 4  # random projections whose sorted orders propose nearest-neighbour candidates
_WINDOW = 2  # neighbours on each side in each sorted order
_PAIR_BLOCK = 256  # candidate pairs whose distances are computed at once


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


@dataclass(frozen=True)
class AnomalyThresholds:
    """When an update is an outlier. A combined score of 1 is the rejection boundary.

    Parameters
    ----------
    norm_threshold : float
        Robust z of the log-norm above which an update is too large (scaling, noise).
    max_norm_ratio : float or None
        An update norm above this multiple of the round's *median* norm is too large, whatever
        the z-score: the median holds while attackers are fewer than half, whereas the densest
        half that centres the z-score can be captured by 40 % attackers sending equal norms
        (Gaussian noise). ``None`` disables the rule. Honest real updates rarely exceed 10×.
    direction_threshold : float
        Robust z of the cosine below which an update points the wrong way.
    dispersion_ratio : float or None
        An update whose dispersion is below this fraction of the round's median is "too
        central" (ALIE, mimicry). ``None`` disables the signal. Real non-IID updates reach
        about 0.25 (sparse updates of devices with few classes); 0.15 leaves them a margin.
    duplicate_ratio : float or None
        An update whose nearest other update is closer than this fraction of the round's median
        nearest-neighbour distance is a (near-)copy: honest devices train on different data, and
        colluders that all send one crafted vector (ALIE, IPM, sybils) are caught by it. ``None``
        disables the signal. Real updates stay above about 0.4.
    max_count_ratio : float or None
        Claimed sample count above this multiple of the round's median is weight inflation.
        ``None`` disables the signal.
    norm_scale_floor : float
        Smallest scale of the log-norm (0.4: the z test never fires below e^1.6 ≈ 5× the typical
        norm at the default threshold). Honest devices with more data or harder data send
        updates several times the typical norm (up to 5× on the vehicle fleet, 13× on MIT-BIH);
        below that, the norm bound of the weighting strategy (``clip_ratio``) contains boosted
        updates without rejecting anyone.
    cosine_scale_floor : float
        Smallest scale of the cosine.
    cosine_relative_floor : float
        Smallest scale of the cosine as a fraction of the typical cosine (0.15: at the default
        threshold an update must be 60 % less aligned than the typical one to be rejected on
        direction alone).
    min_replies : int
        Fewer well-formed replies than this: no statistical rejection (robust statistics of two
        values mean nothing).
    min_replies_dispersion : int
        The coordinate-wise MAD behind the dispersion signal, and the typical nearest-neighbour
        distance behind the duplicate signal, need at least this many replies. Rounds with fewer
        replies are *small rounds*, where ``small_round_backward_pull`` applies.
    small_round_backward_pull : float or None
        In a small round an update is rejected for its direction only if it also pulls the model
        back by at least this many median update norms (:func:`backward_pull`); its direction
        z-score still counts in its direction history and weighting quality either way. With at
        most five cosines in the shortest half, the robust scale is that of the few most similar
        devices, and an honest device with little left to learn (a day without occupancy once
        the model fits it) sends a small update of its own direction 6-11 scales below them: on
        smart_home, 1 or 2 of the 6 honest devices in round 2 of 8 seeds out of 9. A reversed
        typical update pulls back by about the typical cosine (0.4-0.8 median norms); over those
        9 seeds the honest direction outliers pull back by at most 0.24 median norms, and sign
        flippers (20 and 40 %, 6 seeds) by at least 0.38 in round 1, where direction catches
        them; hence 0.3. An update that pulls back by less undoes less than a third of one
        typical update. An update closer to another than ``duplicate_ratio`` of its norm
        (:func:`nearest_relative_distance`; honest ones stay above 0.15 on every scenario) is a
        colluder's copy and keeps the z-score decision: a lone IPM update (``-0.1·mean``) pulls
        back by 0.04 and is let in, but two copies of one vector among six replies shift the
        coordinate-wise median that every other device is judged by. Larger rounds keep the
        z-score alone: a refusal is a smaller share of the round, and the copy and centrality
        signals are on. ``None``: the z-score alone in every round.
    max_reject_fraction : float
        At most this fraction of the well-formed replies is rejected as anomalous (the highest
        scores): robust statistics assume an honest majority, and a model change that moves
        every update at once must not empty the round.
    """

    norm_threshold: float = 4.0
    max_norm_ratio: float | None = 10.0
    direction_threshold: float = 4.0
    dispersion_ratio: float | None = 0.15
    duplicate_ratio: float | None = 0.1
    max_count_ratio: float | None = 10.0
    norm_scale_floor: float = 0.4
    cosine_scale_floor: float = 0.02
    cosine_relative_floor: float = 0.15
    min_replies: int = 3
    min_replies_dispersion: int = 10
    small_round_backward_pull: float | None = 0.3
    max_reject_fraction: float = 0.5

    def __post_init__(self) -> None:
        for name in ("norm_threshold", "direction_threshold"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        for name in ("dispersion_ratio", "duplicate_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1) or None, got {value!r}")
        if self.max_norm_ratio is not None and not self.max_norm_ratio > 1:
            raise ValueError(f"max_norm_ratio must be > 1 or None, got {self.max_norm_ratio!r}")
        if self.max_count_ratio is not None and not self.max_count_ratio > 1:
            raise ValueError(f"max_count_ratio must be > 1 or None, got {self.max_count_ratio!r}")
        for name in ("norm_scale_floor", "cosine_scale_floor", "cosine_relative_floor"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if self.min_replies < 3:
            raise ValueError(f"min_replies must be >= 3, got {self.min_replies!r}")
        if self.min_replies_dispersion < 3:
            raise ValueError(
                f"min_replies_dispersion must be >= 3, got {self.min_replies_dispersion!r}"
            )
        pull = self.small_round_backward_pull
        if pull is not None and not pull > 0:
            raise ValueError(f"small_round_backward_pull must be > 0 or None, got {pull!r}")
        if not 0 < self.max_reject_fraction < 1:
            raise ValueError(
                f"max_reject_fraction must be in (0, 1), got {self.max_reject_fraction!r}"
            )


SIGNALS = (
    "norm_z",
    "norm_ratio",
    "direction_z",
    "output_direction_z",
    "dispersion_ratio",
    "duplicate_ratio",
    "count_ratio",
)
"""Names of the per-device signals in :attr:`AnomalyScores.signals` and in round reports."""


@dataclass
class AnomalyScores:
    """Scores of one round; arrays follow the input order."""

    score: np.ndarray
    signals: dict[str, np.ndarray] = field(default_factory=dict)
    reasons: list[str | None] = field(default_factory=list)
    rejected: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    causes: list[str | None] = field(default_factory=list)
    """The signal (a key of ``signals``) that rejected each update; ``None`` when accepted."""

    @classmethod
    def unscored(cls, n: int) -> AnomalyScores:
        """A round too small (or too malformed) to score: every signal NaN, nobody rejected."""
        return cls(
            np.zeros(n),
            {name: np.full(n, np.nan) for name in SIGNALS},
            [None] * n,
            np.zeros(n, dtype=bool),
            [None] * n,
        )

    @property
    def agreement_z(self) -> np.ndarray:
        """See :func:`agreement_z`."""
        return agreement_z(self.signals["direction_z"], self.signals["output_direction_z"])


def anomaly_scores(
    stats: UpdateStatistics, counts: np.ndarray, thresholds: AnomalyThresholds
) -> AnomalyScores:
    """Combine the signals into one score per device and decide the rejections.

    Each signal is scaled so that 1 is its rejection boundary; the score is the largest of them
    and the reason names that signal. Signals that cannot be estimated are NaN and never reject.

    Parameters
    ----------
    stats : UpdateStatistics
        Output of :func:`update_statistics`.
    counts : np.ndarray
        Claimed sample counts, positive.
    thresholds : AnomalyThresholds
        Decision parameters.

    Returns
    -------
    AnomalyScores
        Combined scores (0 for a round too small to score), the raw signals and the rejections.
    """
    t = thresholds
    n = len(counts)
    if n < t.min_replies:
        return AnomalyScores.unscored(n)
    signals = {name: np.full(n, np.nan) for name in SIGNALS}

    log_norm = np.log(np.maximum(stats.norms, np.finfo(np.float64).tiny))
    c, s = robust_center_scale(log_norm, floor=t.norm_scale_floor)
    signals["norm_z"] = (log_norm - c) / s
    median_norm = float(np.median(stats.norms))
    if median_norm > 0:  # most updates zero: no typical norm to compare with
        signals["norm_ratio"] = stats.norms / median_norm
    signals["direction_z"] = cosine_z(stats.cosine, t)
    if stats.output_cosine is not None:
        signals["output_direction_z"] = cosine_z(stats.output_cosine, t)
    if n >= t.min_replies_dispersion and np.isfinite(stats.dispersion).any():
        signals["dispersion_ratio"] = stats.dispersion / np.nanmedian(stats.dispersion)
    if n >= t.min_replies_dispersion and stats.nearest is not None:
        signals["duplicate_ratio"] = _relative_to_median(stats.nearest)
    signals["count_ratio"] = counts / np.median(counts)

    small_round = n < t.min_replies_dispersion and t.small_round_backward_pull is not None
    pull = backward_pull(stats.cosine, stats.norms) if small_round else np.full(n, np.nan)
    if small_round and t.duplicate_ratio is not None and stats.nearest is not None:
        # Copies are colluders, whose harm is the reference they shift, not their own pull.
        pull[np.nan_to_num(stats.nearest, nan=np.inf) < t.duplicate_ratio] = np.nan
    parts = {
        "norm_z": np.maximum(signals["norm_z"], 0.0) / t.norm_threshold,
        "direction_z": direction_part(signals["direction_z"], pull, t),
    }
    if t.max_norm_ratio is not None:
        parts["norm_ratio"] = signals["norm_ratio"] / t.max_norm_ratio
    if t.dispersion_ratio is not None:
        ratio = signals["dispersion_ratio"]
        parts["dispersion_ratio"] = t.dispersion_ratio / np.maximum(ratio, 1e-12)
    if t.duplicate_ratio is not None:
        ratio = signals["duplicate_ratio"]
        parts["duplicate_ratio"] = t.duplicate_ratio / np.maximum(ratio, 1e-12)
    if t.max_count_ratio is not None:
        parts["count_ratio"] = signals["count_ratio"] / t.max_count_ratio
    table = np.stack([np.nan_to_num(p, nan=0.0) for p in parts.values()])
    score = table.max(axis=0)
    names = list(parts)
    rejected = score >= 1.0
    limit = math.floor(t.max_reject_fraction * n)
    if rejected.sum() > limit:
        # Keep the `limit` highest scores; a stable sort keeps ties in input (device) order.
        keep = np.argsort(-score, kind="stable")[:limit]
        rejected = np.zeros(n, dtype=bool)
        rejected[keep] = True
    causes = [names[int(np.argmax(table[:, i]))] if rejected[i] else None for i in range(n)]
    reasons = [
        None if c is None else _describe(c, signals[c][i], t, pull[i]) for i, c in enumerate(causes)
    ]
    return AnomalyScores(score, signals, reasons, rejected, causes)


def backward_pull(cosine: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """How far each update would move the model back along the round's robust reference.

    ``-cosine × norm / median(norm)``: the update's component against the reference direction,
    in median update norms. A typical update reversed scores about the typical cosine; an update
    orthogonal to the reference, or along it, scores 0 or less. NaN for every update when the
    median norm is 0 (no typical update to measure by).
    """
    norms = np.asarray(norms, dtype=np.float64)
    median = float(np.median(norms)) if len(norms) else 0.0
    if not median > 0:
        return np.full(len(norms), np.nan)
    return -np.asarray(cosine, dtype=np.float64) * norms / median


def direction_part(
    direction_z: np.ndarray, pull: np.ndarray, thresholds: AnomalyThresholds
) -> np.ndarray:
    """The direction signal's share of the score (1: the rejection boundary).

    The robust z-score over ``direction_threshold``; where ``pull`` is finite (a small round,
    see ``small_round_backward_pull``), at most the backward pull over its bound, so that
    rejection needs both. NaN ``pull`` leaves the z-score's share as it is.
    """
    t = thresholds
    part = np.maximum(-np.asarray(direction_z, dtype=np.float64), 0.0) / t.direction_threshold
    if t.small_round_backward_pull is None:
        return part
    bound = np.maximum(np.asarray(pull, dtype=np.float64), 0.0) / t.small_round_backward_pull
    return np.where(np.isfinite(pull), np.fmin(part, bound), part)


def agreement_among(
    updates: Sequence[dict[str, np.ndarray]],
    spec: ModelSpec,
    norms: np.ndarray,
    sample_size: int,
    seed: int,
    server_round: int,
    thresholds: AnomalyThresholds,
) -> np.ndarray:
    """The :func:`agreement_z` of each update, judged among these updates only.

    The same sampled coordinates and output layer as the round's scoring (``seed`` and
    ``server_round`` choose them), and the same robust z-scores; NaN for fewer than 3 updates (no
    robust reference).
    """
    if len(updates) < 3:
        return np.full(len(updates), np.nan)
    plan = SamplePlan.draw(spec, sample_size, seed, server_round)
    stats = update_statistics(gather_sample(updates, spec, plan), norms, with_nearest=False)
    output = output_layer_cosine(updates, spec, sample_size, seed, server_round)
    whole = cosine_z(stats.cosine, thresholds)
    return whole if output is None else agreement_z(whole, cosine_z(output, thresholds))


def cosine_z(cosine: np.ndarray, thresholds: AnomalyThresholds) -> np.ndarray:
    """Robust z-score of each cosine within its round, with the thresholds' scale floors."""
    center, scale = robust_center_scale(
        cosine,
        floor=thresholds.cosine_scale_floor,
        relative_floor=thresholds.cosine_relative_floor,
    )
    return (cosine - center) / scale


def _relative_to_median(values: np.ndarray) -> np.ndarray:
    """``values / median(values)``; when the median is 0 (most updates are copies), 0 stays 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if not np.isfinite(values).any():
            return np.full(len(values), np.nan)
        median = float(np.nanmedian(values))
        if median > 0:
            return values / median
        return np.where(values > 0, np.inf, np.where(values == 0, 0.0, np.nan))


def _describe(signal: str, value: float, t: AnomalyThresholds, pull: float = math.nan) -> str:
    if signal == "norm_z":
        return f"update norm too large (robust z {value:.1f} > {t.norm_threshold:g})"
    if signal == "norm_ratio":
        return f"update norm too large ({value:.1f}× the round median > {t.max_norm_ratio:g})"
    if signal == "direction_z":
        pulled = (
            f"; pulls the model back by {pull:.2f} median norms > {t.small_round_backward_pull:g}"
            if math.isfinite(pull)
            else ""
        )
        return (
            f"update direction off the robust reference "
            f"(robust z {value:.1f} < -{t.direction_threshold:g}{pulled})"
        )
    if signal == "dispersion_ratio":
        return (
            f"update implausibly close to the coordinate-wise centre "
            f"(dispersion {value:.2f}× the median < {t.dispersion_ratio:g})"
        )
    if signal == "duplicate_ratio":
        return (
            f"update a (near-)copy of another device's (nearest distance {value:.2f}× the median "
            f"< {t.duplicate_ratio:g})"
        )
    return f"claimed sample count {value:.1f}× the round median > {t.max_count_ratio:g}"


def agreement_quality(
    direction_z: np.ndarray, soft_z: float, hard_z: float, min_quality: float
) -> np.ndarray:
    """Data-quality factor from the agreement of an update with the round's robust reference.

    Quality is 1 while the direction z-score is above ``-soft_z`` and falls linearly to
    ``min_quality`` at ``-hard_z``. NaN (round too small to score) counts as full quality.
    """
    z = np.nan_to_num(np.asarray(direction_z, dtype=np.float64), nan=0.0)
    ramp = np.clip((-z - soft_z) / (hard_z - soft_z), 0.0, 1.0)
    return 1.0 - (1.0 - min_quality) * ramp


def history_anomaly(score: np.ndarray) -> np.ndarray:
    """The share of a round's score that counts against a device's reliability, in ``[0, 1]``.

    Scores below 0.75 of the rejection boundary are ordinary non-IID variation and cost nothing;
    the share rises linearly to 1 at the boundary (a rejection).
    """
    return np.clip((np.asarray(score, dtype=np.float64) - 0.75) / 0.25, 0.0, 1.0)
