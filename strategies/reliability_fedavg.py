"""FedAvg whose weights combine bounded data quantity, data quality and device reliability."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore import log

from strategies.arrays import ModelSpec, to_arrayrecord, weighted_average
from strategies.handoff import ScoredReplies
from strategies.ledger import (
    RoundLedger,
    empty_report,
    log_rejections,
    record_round,
    round_report,
    validate_sampling,
)
from strategies.reliability import ReliabilityTracker
from strategies.report import DeviceReport, RoundReport, device_entry
from strategies.scoring import agreement_among, agreement_quality
from strategies.thresholds import AnomalyThresholds
from strategies.validation import (
    ParsedReply,
    Rejection,
    check_roster,
    common_metric_keys,
    sanitized_metrics,
    with_records,
)
from strategies.weighting import (
    bounded_quantity,
    cap_shares,
    combine_weights,
    norm_clip_factors,
    weighted_metrics,
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
      attackers keep pointing away and honest devices do not. When flippers are many enough to
      shape the reference in most rounds (40 %), the mean cannot help either (the figures are in
      ``docs/results.md``).
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
        self.roster: dict[int, str] | None = None
        self._ledger = RoundLedger()
        self._scored: dict[int, ScoredReplies] = {}

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

    def observe_outcomes(self, server_round: int, outcomes: Mapping[int, str]) -> None:
        """What became of the nodes asked in ``server_round`` that sent no update.

        See :meth:`strategies.ledger.RoundLedger.observe_outcomes`.
        """
        self._ledger.observe_outcomes(server_round, outcomes)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes like FedAvg; remember the global model and the messages sent."""
        messages = super().configure_train(server_round, arrays, config, grid)
        return self._ledger.train_sent(server_round, arrays, messages)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes like FedAvg; remember the messages sent."""
        messages = super().configure_evaluate(server_round, arrays, config, grid)
        return self._ledger.evaluate_sent(server_round, messages)

    def receive_scored(self, server_round: int, scored: ScoredReplies) -> None:
        """Take the scores of the replies a wrapper hands over next (:mod:`strategies.handoff`).

        This strategy then neither parses those replies again, nor repeats the pass over the
        parameters, nor records the round in the tracker (the wrapper did, with its anomaly
        scores). Replies that are not the scored ones are screened as usual.
        """
        self._scored[server_round] = scored

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies, weight the well-formed ones, and average them."""
        replies = list(replies)
        handoff = self._scored.pop(server_round, None)
        if handoff is not None and not handoff.covers(replies):
            log(WARNING, "aggregate_train: replies differ from the scored ones; screening again")
            handoff = None
        anomaly: list[float | None]
        if handoff is not None:
            spec: ModelSpec | None = handoff.spec
            parsed = [e.parsed for e in handoff.entries]
            rejections: list[Rejection] = []
            direction_z = np.array([e.direction_z for e in handoff.entries])
            anomaly = [e.anomaly_score for e in handoff.entries]
            norms = np.array([e.update_norm for e in handoff.entries])
        else:
            screened = self._ledger.screen(
                server_round, replies, self.weighted_by_key, self.roster, self.max_update_norm
            )
            parsed, rejections, spec, norms = screened
            direction_z = np.full(len(parsed), np.nan)  # not scored
            if spec is not None:
                direction_z = self._direction_z(server_round, parsed, spec, norms)
            anomaly = [None] * len(parsed)
        log_rejections(rejections)

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
        # With a wrapper in front, the replies here are only the accepted ones: lateness and
        # history are the wrapper's to record, or every rejected device would look late.
        unanswered = (
            self._ledger.unanswered(server_round, replies, self.roster) if handoff is None else {}
        )
        late = list(unanswered)
        if handoff is None:
            z = direction_z.tolist()
            completed = [(p.device, 0.0, z[i]) for i, p in enumerate(parsed)]
            directions = {p.device: z[i] for i, p in enumerate(parsed)}
            record_round(self.tracker, server_round, completed, rejections, unanswered, directions)
        self._ledger.store_report(
            server_round,
            self._report(
                server_round,
                replies,
                parsed,
                rejections,
                late,
                (counts, quantity, mean_direction, quality, reliability, clip, shares),
                anomaly,
            ),
        )
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Average evaluate metrics like FedAvg, after dropping replies it would choke on."""
        kept = self._ledger.screen_evaluate(server_round, replies, self.weighted_by_key)
        return super().aggregate_evaluate(server_round, kept) if kept else None

    # -- fl-iot extensions -----------------------------------------------------------------------

    def round_report(self, server_round: int) -> RoundReport:
        """The report of ``server_round`` (see :mod:`strategies.report`)."""
        report = self._ledger.report(server_round)
        return empty_report(type(self).__name__, server_round) if report is None else report

    def state_dict(self) -> dict[str, Any]:
        """Serialisable server state for a resumed run: the reliability tracker.

        The roster is not part of it: a resumed run takes its own roll call and sets it.
        """
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.tracker.load_state_dict(state["tracker"])

    # -- internals -------------------------------------------------------------------------------

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

    def _report(
        self,
        server_round: int,
        replies: list[Message],
        parsed: list[ParsedReply],
        rejections: list[Rejection],
        late: list[str],
        factors: tuple[np.ndarray, ...],
        anomaly: list[float | None],
    ) -> RoundReport:
        counts, quantity, mean_direction, quality, reliability, clip, shares = (
            f.tolist() for f in factors
        )
        devices: dict[str, DeviceReport] = {}
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
        return round_report(
            type(self).__name__,
            server_round,
            len(replies),
            len(parsed),
            devices,
            rejections,
            late,
            self.tracker,
        )
