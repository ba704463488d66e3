"""When an update is an outlier: anomaly rejection's thresholds, each default with its reason."""

from __future__ import annotations

from dataclasses import dataclass


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
    norm_reference_floor : float or None
        Updates below this fraction of the round's median norm do not count in the median that
        ``max_norm_ratio`` divides by. Once a model fits most of a non-IID fleet, those devices
        send near-zero updates; when they are half the round the median falls to theirs and the
        devices still learning sit 10-77× above it (C-MAPSS engine units from round 20, where
        this rule removed 24 of 25 false refusals: ``docs/false_rejections.md``). Without the
        near-zero updates the median stays a typical *learning* update's. The price: attackers
        sending equal large norms capture it once they outnumber the honest devices that still
        learn, not merely the honest ones. ``None``: the plain median.
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
        back by at least this many median update norms (:func:`~strategies.scoring.backward_pull`);
        its direction z-score still counts in its direction history and weighting quality either
        way. With at most five cosines in the shortest half, the robust scale is that of the few
        most similar devices, and an honest device with little left to learn (a day without
        occupancy once the model fits it) sends a small update of its own direction 6-11 scales
        below them. A reversed typical update pulls back by about the typical cosine (0.4-0.8
        median norms); honest direction outliers pull back by much less, sign flippers by more in
        round 1, where direction catches them (measured figures: ``docs/false_rejections.md``);
        hence 0.3. An update that pulls back by less undoes less than a third of one typical update.
        An update closer to another than ``duplicate_ratio`` of its norm
        (:func:`~strategies.statistics.nearest_relative_distance`; honest ones stay above 0.15 on
        every scenario) is a colluder's copy and keeps the z-score decision: a lone IPM update
        (``-0.1·mean``) pulls back by 0.04 and is let in, but two copies of one vector among six
        replies shift the coordinate-wise median that every other device is judged by. Larger rounds
        have ``backward_pull``, set apart because there the copy and centrality signals are on.
        ``None``: the z-score alone in small rounds.
    backward_pull : float or None
        The same requirement in rounds of at least ``min_replies_dispersion`` replies: a
        direction outlier is refused only if it also pulls the model back by at least this many
        median update norms. Where honest data is multimodal (C-MAPSS engine units, whose
        near-failure shares differ), a whole cluster of honest devices, up to 10 of 25, sends
        updates orthogonal to the majority's, 4-7 robust scales below it and pulling back by
        less than 0.3; sign flippers mostly pull back by 0.3-1.0. Those that pull back by less,
        like honest outliers, are then down-weighted by the weighting's agreement quality (or
        clipped) instead of refused. Off by default because Gaussian noise of an honest update's
        size pulls back by nothing either: the rule lets it in (figures for both:
        ``docs/false_rejections.md``). ``None``: the z-score alone in these rounds.
    max_reject_fraction : float
        At most this fraction of the well-formed replies is rejected as anomalous (the highest
        scores): robust statistics assume an honest majority, and a model change that moves
        every update at once must not empty the round.
    """

    norm_threshold: float = 4.0
    max_norm_ratio: float | None = 10.0
    norm_reference_floor: float | None = None
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
    backward_pull: float | None = None
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
        for name in ("small_round_backward_pull", "backward_pull"):
            pull = getattr(self, name)
            if pull is not None and not pull > 0:
                raise ValueError(f"{name} must be > 0 or None, got {pull!r}")
        floor = self.norm_reference_floor
        if floor is not None and not 0 < floor < 1:
            raise ValueError(f"norm_reference_floor must be in (0, 1) or None, got {floor!r}")
        if not 0 < self.max_reject_fraction < 1:
            raise ValueError(
                f"max_reject_fraction must be in (0, 1), got {self.max_reject_fraction!r}"
            )
