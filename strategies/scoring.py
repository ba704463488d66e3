"""Anomaly signals, scores and rejections of one round, in O(n·d).

Every signal compares one update with a robust picture of the round, never with the mean that
attackers can pull:

``norm``
    The full L2 norm of the update ``x_i - g`` (one streaming pass over all parameters, see
    :func:`strategies.arrays.squared_update_norms`), as a robust z-score of its logarithm. Catches
    boosted/scaled updates, large Gaussian noise, absurd values.
``direction``
    Cosine between the device's update and the coordinate-wise median of the round's norm-normalised
    updates, on a seeded random sample of coordinates (the median of ``n`` rows of ``k`` sampled
    coordinates costs O(n·k), not O(n·d)). Its robust z-score catches sign flips, IPM (``-ε·mean``),
    Gaussian noise and many label flips.
``output_direction``
    The same on the output layer alone (:meth:`~strategies.sample.SamplePlan.output_layer`), where
    label flips show most. It does not reject; with ``direction`` it makes the :func:`agreement_z`
    that the weighting's quality and each device's direction history use.
``dispersion``
    RMS of the per-coordinate robust z-scores of the normalised update (coordinate median and MAD
    over the devices; the MAD floored at a tenth of the typical coordinate's and each z clipped at
    3, so coordinates that almost every device leaves at zero, such as ReLUs dead for their data,
    cannot dominate). A genuine local update is noisy on every coordinate; an update crafted to sit
    on the centre of *all* coordinates has a small fraction of the typical dispersion. On real
    non-IID fleets honest sparse updates reach ~0.25× the median, and ALIE built from the colluders'
    own (widely spread) updates is not central at all, hence the low default.
``duplicate``
    Distance to the nearest other update relative to the larger norm, over the round's median
    (:func:`~strategies.statistics.nearest_relative_distance`, O(n·k) on the sampled coordinates via
    sorted random projections). Devices train on different data, so honest updates are never copies
    (≥ 0.4× the median on MIT-BIH and the vehicle fleet); colluders that send one crafted vector
    (ALIE, IPM, sybils) are at 0.
``count``
    The claimed sample count over the round's median: weight inflation.

Location and scale are robust (:func:`strategies.robust.robust_center_scale`): attackers
cannot pull them by sending extreme values, and floors on each scale keep an unusually
homogeneous round from turning small differences into rejections
(:class:`~strategies.thresholds.AnomalyThresholds`).

In a small round (fewer than ``min_replies_dispersion`` replies) a direction outlier that is no
copy of another update must also pull the model back (:func:`backward_pull`): there the shortest
half holds at most five cosines, and a non-IID device with little left to learn sends a small
update of its own direction that sits as many scales below the most similar devices as a sign
flipper does; the two differ in how much of a typical update they would undo. Larger rounds make
the same requirement only where ``backward_pull`` is set (off by default: why in
:class:`~strategies.thresholds.AnomalyThresholds`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from strategies.arrays import ModelSpec
from strategies.robust import robust_center_scale
from strategies.sample import SamplePlan, gather_sample
from strategies.statistics import UpdateStatistics, output_layer_cosine, update_statistics
from strategies.thresholds import AnomalyThresholds

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
        Output of :func:`~strategies.statistics.update_statistics`.
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
    reference_norm = typical_norm(stats.norms, t.norm_reference_floor)
    if reference_norm > 0:  # most updates zero: no typical norm to compare with
        signals["norm_ratio"] = stats.norms / reference_norm
    signals["direction_z"] = cosine_z(stats.cosine, t)
    if stats.output_cosine is not None:
        signals["output_direction_z"] = cosine_z(stats.output_cosine, t)
    if n >= t.min_replies_dispersion and np.isfinite(stats.dispersion).any():
        signals["dispersion_ratio"] = stats.dispersion / np.nanmedian(stats.dispersion)
    if n >= t.min_replies_dispersion and stats.nearest is not None:
        signals["duplicate_ratio"] = _relative_to_median(stats.nearest)
    signals["count_ratio"] = counts / np.median(counts)

    pull_bound = t.small_round_backward_pull if n < t.min_replies_dispersion else t.backward_pull
    pull = np.full(n, np.nan) if pull_bound is None else backward_pull(stats.cosine, stats.norms)
    if pull_bound is not None and t.duplicate_ratio is not None and stats.nearest is not None:
        # Copies are colluders, whose harm is the reference they shift, not their own pull.
        pull[np.nan_to_num(stats.nearest, nan=np.inf) < t.duplicate_ratio] = np.nan
    parts = {
        "norm_z": np.maximum(signals["norm_z"], 0.0) / t.norm_threshold,
        "direction_z": direction_part(signals["direction_z"], pull, t, pull_bound),
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
        None if c is None else _describe(c, signals[c][i], t, pull[i], pull_bound)
        for i, c in enumerate(causes)
    ]
    return AnomalyScores(score, signals, reasons, rejected, causes)


def agreement_z(direction_z: np.ndarray, output_direction_z: np.ndarray) -> np.ndarray:
    """The direction z-score that agreement quality and device history use.

    The lower of the whole update's and the output layer's (either alone where the other is NaN).
    """
    return np.fmin(direction_z, output_direction_z)


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
    direction_z: np.ndarray,
    pull: np.ndarray,
    thresholds: AnomalyThresholds,
    pull_bound: float | None,
) -> np.ndarray:
    """The direction signal's share of the score (1: the rejection boundary).

    The robust z-score over ``direction_threshold``; with a ``pull_bound`` (the round's
    ``small_round_backward_pull`` or ``backward_pull``), where ``pull`` is finite, at most the
    backward pull over that bound, so that rejection needs both. NaN ``pull`` leaves the
    z-score's share as it is.
    """
    part = (
        np.maximum(-np.asarray(direction_z, dtype=np.float64), 0.0) / thresholds.direction_threshold
    )
    if pull_bound is None:
        return part
    bound = np.maximum(np.asarray(pull, dtype=np.float64), 0.0) / pull_bound
    return np.where(np.isfinite(pull), np.fmin(part, bound), part)


def typical_norm(norms: np.ndarray, floor: float | None) -> float:
    """The round's median update norm; with ``floor``, of the norms at least ``floor`` × it.

    See ``norm_reference_floor``; 0 when the median is 0.
    """
    norms = np.asarray(norms, dtype=np.float64)
    median = float(np.median(norms))
    if floor is None or not median > 0:
        return median
    return float(np.median(norms[norms >= floor * median]))


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


def _describe(
    signal: str,
    value: float,
    t: AnomalyThresholds,
    pull: float = math.nan,
    pull_bound: float | None = None,
) -> str:
    if signal == "norm_z":
        return f"update norm too large (robust z {value:.1f} > {t.norm_threshold:g})"
    if signal == "norm_ratio":
        median = "median" if t.norm_reference_floor is None else "median learning update"
        return f"update norm too large ({value:.1f}× the round {median} > {t.max_norm_ratio:g})"
    if signal == "direction_z":
        pulled = (
            f"; pulls the model back by {pull:.2f} median norms > {pull_bound:g}"
            if math.isfinite(pull) and pull_bound is not None
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
