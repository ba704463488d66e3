"""FedAvg whose weights combine bounded data quantity, data quality and device reliability."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, NamedTuple

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore import log

from strategies import reliability as R
from strategies.arrays import ArrayFormatError, ModelSpec, to_arrayrecord, weighted_average
from strategies.reliability import ReliabilityTracker
from strategies.report import device_entry, device_order
from strategies.scoring import agreement_among, agreement_quality
from strategies.thresholds import AnomalyThresholds
from strategies.validation import (
    FAILED,
    UNKNOWN,
    Outbox,
    ParsedReply,
    Rejection,
    check_roster,
    check_values,
    common_metric_keys,
    log_rejection,
    node_of,
    roster_device,
    sanitized_metrics,
    screen_evaluate_replies,
    screen_train_replies,
    with_records,
)
from strategies.weighting import (
    bounded_quantity,
    cap_shares,
    combine_weights,
    norm_clip_factors,
    weighted_metrics,
)

_KEEP_ROUNDS = 32  # round reports and sent-message metadata kept in memory


class ScoredReply(NamedTuple):
    """One accepted reply as the wrapper scored it."""

    parsed: ParsedReply
    direction_z: float
    anomaly_score: float
    update_norm: float


@dataclass
class ScoredReplies:
    """Replies a wrapper screened and scored, handed to the strategy that aggregates them.

    ``entries`` maps ``id(message)`` to its :class:`ScoredReply`: identity, not content, because
    the wrapper passes the very same Message objects on.
    """

    spec: ModelSpec
    entries: dict[int, ScoredReply] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        spec: ModelSpec,
        parsed: Sequence[ParsedReply],
        direction_z: Sequence[float],
        anomaly: Sequence[float],
        norms: Sequence[float],
    ) -> ScoredReplies:
        """Index the accepted replies with their scores and update norms."""
        entries = {
            id(p.message): ScoredReply(p, float(z), float(a), float(u))
            for p, z, a, u in zip(parsed, direction_z, anomaly, norms, strict=True)
        }
        return cls(spec, entries)

    def covers(self, replies: Sequence[Message]) -> bool:
        """Whether ``replies`` are exactly the scored Messages."""
        return len(replies) == len(self.entries) and all(id(m) in self.entries for m in replies)

    def parsed(self, replies: Sequence[Message]) -> list[ParsedReply]:
        """The parsed replies, in device order."""
        return sorted(
            (self.entries[id(m)].parsed for m in replies), key=lambda p: device_order(p.device)
        )


class ReliabilityWeightedFedAvg(FedAvg):
    """FedAvg with weights ``bounded quantity × quality × reliability``, robust to bad replies.

    The weight of device ``i`` in round ``t`` is::

        w_i = min(n_i, quantity_cap · median_j n_j) · quality_i · reliability_i(t-1)

    - **quantity**: the claimed ``num-examples``, capped at ``quantity_cap`` times the round's
      median, so a device lying about its count gains at most that factor.
    - **quality**: agreement of the device's updates with the robust reference direction of
      their rounds (coordinate-wise median of the normalised updates, on a seeded random sample
      of coordinates and on the output layer; the lower of the two robust z-scores, see
      :mod:`strategies.scoring`), as the device's decayed mean over its rounds, this one included
      (:meth:`~strategies.ReliabilityTracker.mean_direction`). 1 while that mean is above
      ``-quality_soft_z``, falling to ``min_quality`` at ``-quality_hard_z``. The server cannot
      see data, and self-reported losses are free to fake; agreement is computed by the server
      from the update itself and can only be raised by sending an update that agrees with the
      majority on coordinates the device does not know in advance. The mean matters on non-IID
      fleets: in one round an honest device with an unusual data mix points away as much as an
      attacker, and colluders that are many in a round shape the reference itself; over rounds
      attackers keep pointing away and honest devices do not (label flip on healthcare_wearables,
      20 %, 3 seeds: 0.607 final accuracy with one round's z-score, ``docs/robustness.md`` at
      commit 25c3b8c; 0.724 with the mean, the current ``docs/robustness.md``). At 40 % the
      flippers shape the reference in most rounds and the mean cannot help (vehicle fleet:
      0.377 with one round's z-score, 0.323 now).
    - **reliability**: the device's history in :class:`~strategies.ReliabilityTracker`
      (completed, failed, late and anomalous rounds, with decay), as of the previous round.

    Then every update ``x_i - g`` larger than ``clip_ratio`` times the round's median update norm
    is shrunk to that norm (:func:`~strategies.weighting.norm_clip_factors`), so no accepted
    update, however boosted, moves the model by more than a few typical updates.

    Under central DP (:class:`strategies.central_dp.CentralDP` sets ``max_weight_share``) the
    weights keep only what does not depend on the other devices' updates of the round, bounded
    quantity and reliability, and no device's share exceeds ``max_weight_share``
    (:func:`~strategies.weighting.cap_shares`): agreement quality and the median-norm bound are
    off, since one device could move the others' weights through them. Reliability then rests on
    participation (completed, failed, late, malformed); anomaly scores only enter it when
    :class:`~strategies.AnomalyRejection` is in front, which central DP refuses.

    Malformed replies (error replies, missing/extra records, wrong keys, shapes or dtypes,
    NaN/Inf, bad sample counts) are rejected and logged with the device and the reason; they never
    raise. Every round's decisions are available from :meth:`round_report`.

    Devices are keyed by the node a reply answers, through the roster given to
    :meth:`set_roster` (node ids without one), never by what a reply claims; see
    :mod:`strategies.validation`.

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, min_available_nodes
        Sampling, as in Flower's ``FedAvg``.
    weighted_by_key : str
        MetricRecord key of the claimed sample count (default ``"num-examples"``).
    arrayrecord_key, configrecord_key, train_metrics_aggr_fn, evaluate_metrics_aggr_fn
        As in Flower's ``FedAvg``; metrics are averaged with the final weights. NaN and Inf
        values never reach the average: a reply's non-finite train metric is left out of that
        key's average (:func:`~strategies.weighting.weighted_metrics`); for a custom
        ``train_metrics_aggr_fn`` and for evaluation, a key that is non-finite in any reply is
        dropped for the round (:func:`~strategies.validation.sanitized_metrics`).
    quantity_cap : float
        Cap on a device's count as a multiple of the round's median (>= 1; default 3: a
        device with three times the typical data still counts fully, a liar gains at most 3×).
    min_quality : float
        Quality of an update pointing away from the consensus, in ``(0, 1]`` (default 0.1: kept,
        but with a tenth of the weight, so minority data is never silenced entirely).
    quality_soft_z, quality_hard_z : float
        Mean direction z-scores where quality starts to fall and where it reaches
        ``min_quality`` (defaults 1.5 and 2.5; ``0 < soft < hard``). A mean is steadier than one
        round's z-score, hence lower thresholds than the rejection's 4.
    tracker : ReliabilityTracker or None
        History to read and update; a fresh default tracker when ``None``. Share one tracker with
        :class:`~strategies.AnomalyRejection` to feed anomaly scores into reliability.
    sample_size : int
        Coordinates sampled per round for the quality statistic (>= 16).
    seed : int
        Seed of the coordinate sample (with the round number).
    max_update_norm : float or None
        Absolute bound on an update's L2 norm; larger updates are malformed. ``None``: no bound.
    clip_ratio : float or None
        Accepted updates are shrunk to at most this multiple of the round's median update norm
        (> 0; default 3). ``None``: no clipping, weights as above only.
    """

    # pylint: disable=too-many-arguments,too-many-instance-attributes
    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        *,
        quantity_cap: float = 3.0,
        min_quality: float = 0.1,
        quality_soft_z: float = 1.5,
        quality_hard_z: float = 2.5,
        tracker: ReliabilityTracker | None = None,
        sample_size: int = 4096,
        seed: int = 0,
        max_update_norm: float | None = None,
        clip_ratio: float | None = 3.0,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        )
        if not quantity_cap >= 1.0:
            raise ValueError(f"quantity_cap must be >= 1, got {quantity_cap!r}")
        if not 0.0 < min_quality <= 1.0:
            raise ValueError(f"min_quality must be in (0, 1], got {min_quality!r}")
        if not 0.0 < quality_soft_z < quality_hard_z:
            raise ValueError(
                "need 0 < quality_soft_z < quality_hard_z, got "
                f"{quality_soft_z!r} and {quality_hard_z!r}"
            )
        validate_sampling(sample_size, max_update_norm)
        if clip_ratio is not None and not clip_ratio > 0:
            raise ValueError(f"clip_ratio must be > 0 or None, got {clip_ratio!r}")
        self.clip_ratio = None if clip_ratio is None else float(clip_ratio)
        self.quantity_cap = float(quantity_cap)
        self.min_quality = float(min_quality)
        self.quality_soft_z = float(quality_soft_z)
        self.quality_hard_z = float(quality_hard_z)
        self.tracker = tracker if tracker is not None else ReliabilityTracker()
        self.sample_size = int(sample_size)
        self.seed = int(seed)
        self.max_update_norm = max_update_norm
        # Set by central DP (strategies.central_dp.CentralDP) each round; see the class docstring.
        self.max_weight_share: float | None = None
        self.current_arrays: ArrayRecord | None = None
        self.roster: dict[int, str] | None = None
        self._sent = Outbox(_KEEP_ROUNDS)
        self._sent_evaluate = Outbox(_KEEP_ROUNDS)
        self._signals: dict[int, ScoredReplies] = {}
        self._reports: OrderedDict[int, dict[str, Any]] = OrderedDict()

    def __repr__(self) -> str:
        return f"ReliabilityWeightedFedAvg(quantity_cap={self.quantity_cap:g})"

    def summary(self) -> None:
        """Log the weighting settings, then FedAvg's."""
        log(INFO, "\t├──> Reliability weighting:")
        log(INFO, "\t│\t├── Quantity cap: %g × round median", self.quantity_cap)
        log(INFO, "\t│\t├── Update norm bound: %s × round median", self.clip_ratio)
        log(
            INFO,
            "\t│\t├── Quality: 1 above z=-%g, %g at z=-%g",
            self.quality_soft_z,
            self.min_quality,
            self.quality_hard_z,
        )
        t = self.tracker
        log(
            INFO,
            "\t│\t└── Reliability: decay %g, prior %g, penalties late %g / failed %g / anomaly %g",
            t.decay,
            t.prior,
            t.late_penalty,
            t.failure_penalty,
            t.anomaly_penalty,
        )
        super().summary()

    # -- Flower Strategy API ---------------------------------------------------------------------

    def set_roster(self, roster: Mapping[int, str] | None) -> None:
        """Key devices by ``{node_id: device_key}`` from now on; ``None``: by node id.

        With a roster, a reply from a node that is not in it is refused, and one whose
        ``device`` ConfigRecord claims another device is refused as a spoof (see
        :func:`~strategies.validation.screen_train_replies`).

        Raises
        ------
        ValueError
            If the roster is malformed or puts one device on two nodes.
        """
        self.roster = check_roster(roster)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes like FedAvg; remember the global model and the messages sent."""
        self.current_arrays = arrays
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sent.record(server_round, messages)
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes like FedAvg; remember the messages sent."""
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._sent_evaluate.record(server_round, messages)
        return messages

    def receive_scored(self, server_round: int, scored: ScoredReplies) -> None:
        """Accept the replies a wrapper has already screened and scored in this round.

        Called by :class:`~strategies.AnomalyRejection` just before it delegates aggregation with
        the very same Message objects: the wrapper has checked the values and scored every update,
        so this strategy neither parses the replies again, nor repeats the pass over the
        parameters, nor records the round in the tracker (the wrapper did, with the anomaly
        scores). Replies that are not the scored ones are screened as usual.
        """
        self._signals[server_round] = scored

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies, weight the well-formed ones, and average them."""
        replies = list(replies)
        handoff = self._signals.pop(server_round, None)
        if handoff is not None and not handoff.covers(replies):
            log(WARNING, "aggregate_train: replies differ from the scored ones; screening again")
            handoff = None
        anomaly: list[float | None]
        if handoff is not None:
            spec: ModelSpec | None = handoff.spec
            parsed = handoff.parsed(replies)
            rejections: list[Rejection] = []
            direction_z = np.array([handoff.entries[id(p.message)].direction_z for p in parsed])
            anomaly = [handoff.entries[id(p.message)].anomaly_score for p in parsed]
            norms = np.array([handoff.entries[id(p.message)].update_norm for p in parsed])
        else:
            parsed, rejections, spec = screen_train_replies(
                replies,
                self._spec(),
                self.weighted_by_key,
                self.roster,
                self._sent.sent(server_round),
            )
            direction_z = np.full(len(parsed), np.nan)  # not scored
            norms = np.zeros(len(parsed))
            if spec is not None:
                parsed, value_rejections, norms = check_values(parsed, spec, self.max_update_norm)
                rejections = sorted(
                    rejections + value_rejections,
                    key=lambda r: (device_order(r.device), r.reason),
                )
                direction_z = self._direction_z(server_round, parsed, spec, norms)
            anomaly = [None] * len(parsed)
        for r in rejections:
            log_rejection(r)

        counts = np.array([p.num_examples for p in parsed], dtype=np.float64)
        quantity = bounded_quantity(counts, self.quantity_cap)
        # Agreement is judged on the device's decayed mean direction, this round included: one
        # round says little on a non-IID fleet, a history of pointing away says much more.
        mean_direction = np.array(
            [
                self.tracker.mean_direction(p.device, float(z), server_round)
                for p, z in zip(parsed, direction_z, strict=True)
            ]
        )
        quality = agreement_quality(
            mean_direction, self.quality_soft_z, self.quality_hard_z, self.min_quality
        )
        reliability = np.array([self.tracker.reliability(p.device, server_round) for p in parsed])
        if self.max_weight_share is not None:
            # Under central DP a weight may not depend on the other devices' updates of the
            # round (agreement quality, the median-norm bound): one device could then move the
            # others' weights. The DP wrapper has clipped every update already.
            quality, clip = np.ones(len(parsed)), np.ones(len(parsed))
        elif spec is None or spec.global_views is None:
            clip = np.ones(len(parsed))  # no update origin to shrink towards
        else:
            clip = norm_clip_factors(norms, self.clip_ratio)
        raw = combine_weights(quantity, quality, reliability)
        if self.max_weight_share is not None and len(raw):
            raw = cap_shares(raw, self.max_weight_share)
        shares = raw / raw.sum() if len(raw) and raw.sum() > 0 else np.zeros_like(raw)

        arrays = metrics = None
        if parsed and spec is not None:
            arrays = to_arrayrecord(self._average(parsed, raw, clip, spec))
            metrics = self._aggregate_metrics(parsed, raw)
        if handoff is None:
            self._record_history(server_round, parsed, direction_z, rejections, replies)
        # With a wrapper in front, the replies here are only the accepted ones: lateness is the
        # wrapper's to report, or every rejected device would look late.
        late = self._late(server_round, replies) if handoff is None else []
        self._reports[server_round] = self._report(
            server_round,
            replies,
            parsed,
            rejections,
            late,
            (counts, quantity, mean_direction, quality, reliability, clip, shares),
            anomaly,
        )
        _trim(self._reports)
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Average evaluate metrics like FedAvg, after dropping replies it would choke on."""
        kept, dropped = screen_evaluate_replies(
            replies, self.weighted_by_key, self._sent_evaluate.sent(server_round)
        )
        for node, reason in dropped:
            log(INFO, "aggregate_evaluate: ignored node %d: %s", node, reason)
        return super().aggregate_evaluate(server_round, kept) if kept else None

    # -- fl-iot extensions -----------------------------------------------------------------------

    def round_report(self, server_round: int) -> dict[str, Any]:
        """The JSON-serialisable report of ``server_round`` (see :mod:`strategies.report`)."""
        report = self._reports.get(server_round)
        if report is None:
            return {
                "strategy": type(self).__name__,
                "round": server_round,
                "rejected": {},
                "devices": {},
            }
        return report

    def state_dict(self) -> dict[str, Any]:
        """Serialisable server state for a resumed run: the reliability tracker.

        The roster is not part of it: a resumed run takes its own roll call and sets it.
        """
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.tracker.load_state_dict(state["tracker"])

    # -- internals -------------------------------------------------------------------------------

    def _spec(self) -> ModelSpec | None:
        if self.current_arrays is None:
            return None
        try:
            return ModelSpec.from_arrayrecord(self.current_arrays)
        except ArrayFormatError as error:
            log(WARNING, "global model not readable (%s); inferring the layout from replies", error)
            return None

    def _direction_z(
        self, server_round: int, parsed: list[ParsedReply], spec: ModelSpec, norms: np.ndarray
    ) -> np.ndarray:
        # The same robust z-scores as AnomalyRejection's direction signals, default floors; NaN
        # below 3 replies (no robust reference: not scored).
        return agreement_among(
            [p.arrays for p in parsed],
            spec,
            norms,
            self.sample_size,
            self.seed,
            server_round,
            AnomalyThresholds(),
        )

    @staticmethod
    def _average(
        parsed: list[ParsedReply], raw: np.ndarray, clip: np.ndarray, spec: ModelSpec
    ) -> dict[str, np.ndarray]:
        """``g + Σ w_i c_i (x_i - g) / Σ w_i``: the weighted average of the clipped updates.

        Shrinking update ``i`` by ``c_i`` towards the global model ``g`` is the same as moving the
        weight ``w_i (1 - c_i)`` from ``x_i`` to ``g``, so the one streaming weighted average over
        the replies (and ``g``) does it, with no per-update copy.
        """
        updates = [p.arrays for p in parsed]
        if (clip >= 1.0).all() or spec.global_views is None:
            return weighted_average(updates, raw, spec)
        moved = float(np.sum(raw * (1.0 - clip)))
        weights = np.append(raw * clip, moved)
        return weighted_average([*updates, spec.global_views], weights, spec)

    def _aggregate_metrics(self, parsed: list[ParsedReply], raw: np.ndarray) -> MetricRecord:
        metrics = [p.metrics for p in parsed]
        if self.train_metrics_aggr_fn is aggregate_metricrecords:
            # Flower's own averaging, without a RecordDict per reply (see weighted_metrics).
            keys = [k for k in common_metric_keys(metrics) if k != self.weighted_by_key]
            return MetricRecord(weighted_metrics(metrics, raw.tolist(), keys))  # type: ignore[arg-type]
        clean_metrics = sanitized_metrics(metrics, self.weighted_by_key, weights=raw.tolist())
        records = [
            with_records(
                p.message.content, metrics=(p.metrics_key, m), arrays=(p.arrays_key, p.array_record)
            )
            for p, m in zip(parsed, clean_metrics, strict=True)
        ]
        return self.train_metrics_aggr_fn(records, self.weighted_by_key)

    def _record_history(
        self,
        server_round: int,
        parsed: list[ParsedReply],
        direction_z: np.ndarray,
        rejections: list[Rejection],
        replies: list[Message],
    ) -> None:
        for p, z in zip(parsed, direction_z, strict=True):
            self.tracker.observe(p.device, server_round, R.COMPLETED, direction=float(z))
        for r in rejections:
            if r.kind == UNKNOWN:
                continue  # a node outside the roster is no device: nothing to remember
            outcome = R.FAILED if r.kind == FAILED else R.MALFORMED
            self.tracker.observe(r.device, server_round, outcome)
        for device in self._late(server_round, replies):
            self.tracker.observe(device, server_round, R.LATE)

    def _late(self, server_round: int, replies: list[Message]) -> list[str]:
        return late_devices(
            self._sent.nodes(server_round), replies, self._sent.sent(server_round), self.roster
        )

    def _report(
        self,
        server_round: int,
        replies: list[Message],
        parsed: list[ParsedReply],
        rejections: list[Rejection],
        late: list[str],
        factors: tuple[np.ndarray, ...],
        anomaly: list[float | None],
    ) -> dict[str, Any]:
        counts, quantity, mean_direction, quality, reliability, clip, shares = (
            f.tolist() for f in factors
        )
        devices: dict[str, dict[str, Any]] = {}
        for i, p in enumerate(parsed):
            devices[p.device] = device_entry(
                "accepted",
                num_examples=counts[i],
                weight=shares[i],
                quantity=quantity[i],
                mean_direction_z=mean_direction[i],
                quality=quality[i],
                reliability=reliability[i],
                norm_clip=clip[i],
                anomaly_score=anomaly[i],
            )
        known = [r for r in rejections if r.kind != UNKNOWN]
        for r in known:
            devices.setdefault(
                r.device,
                device_entry(
                    r.kind, weight=0.0, reliability=self.tracker.reliability(r.device, server_round)
                ),
            )
        report = {
            "strategy": type(self).__name__,
            "round": server_round,
            "num_replies": len(replies),
            "num_accepted": len(parsed),
            "rejected": {r.device: r.reason for r in known},
            "late": late,
            "devices": dict(sorted(devices.items(), key=lambda kv: device_order(kv[0]))),
        }
        return with_unknown_nodes(report, rejections)


def validate_sampling(sample_size: int, max_update_norm: float | None) -> None:
    """Shared checks of the scoring parameters of both strategies.

    Raises
    ------
    ValueError
        If ``sample_size`` < 16 or ``max_update_norm`` is not positive.
    """
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 16:
        raise ValueError(f"sample_size must be an int >= 16, got {sample_size!r}")
    if max_update_norm is not None and not max_update_norm > 0:
        raise ValueError(f"max_update_norm must be > 0 or None, got {max_update_norm!r}")


def late_devices(
    configured: set[int],
    replies: Iterable[Message],
    sent: Mapping[str, int],
    roster: Mapping[int, str] | None,
) -> list[str]:
    """Devices of nodes that were asked to train but sent nothing (neither content nor error).

    Replies are matched to nodes through the messages they answer (``sent``, see
    :func:`~strategies.validation.node_of`), so the SuperLink's error reply for a dead node
    counts as that node's answer. Nodes outside the roster are no devices and are left out.
    """
    answered = {node_of(m, sent) for m in replies}
    devices = (roster_device(node, roster) for node in configured - answered)
    return sorted((d for d in devices if d is not None), key=device_order)


def with_unknown_nodes(report: dict[str, Any], rejections: Iterable[Rejection]) -> dict[str, Any]:
    """``report`` plus ``unknown_nodes``, ``{node_id: reason}``, if unknown nodes replied.

    Nodes outside the roster are no devices, so they stay out of ``rejected`` and ``devices``.
    """
    unknown = {str(r.node_id): r.reason for r in rejections if r.kind == UNKNOWN}
    if unknown:
        report["unknown_nodes"] = unknown
    return report


def _trim(store: OrderedDict[int, Any]) -> None:
    while len(store) > _KEEP_ROUNDS:
        store.popitem(last=False)
