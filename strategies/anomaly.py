"""Anomaly rejection: a wrapper that filters updates before any Flower strategy aggregates them."""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Mapping
from logging import ERROR, INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from strategies.arrays import ModelSpec, restore_layout
from strategies.handoff import ScoredAggregation, ScoredReplies
from strategies.ledger import (
    RoundLedger,
    empty_report,
    log_rejections,
    record_round,
    round_report,
    validate_sampling,
)
from strategies.reliability import Outcome, ReliabilityTracker
from strategies.report import (
    DeviceReport,
    RoundReport,
    device_entry,
    device_order,
    merge_reports,
)
from strategies.sample import SamplePlan, gather_sample
from strategies.scoring import (
    SIGNALS,
    AnomalyScores,
    agreement_among,
    anomaly_scores,
    history_anomaly,
)
from strategies.statistics import output_layer_cosine, update_statistics
from strategies.thresholds import AnomalyThresholds
from strategies.validation import (
    ParsedReply,
    Rejection,
    RejectionKind,
    check_roster,
    clone_reply,
    sanitized_metrics,
    with_records,
)

COLLUSION_CAUSES = frozenset({"duplicate_ratio", "dispersion_ratio"})
"""Rejection causes that mark colluders (copies of one crafted update, or updates crafted onto the
coordinate-wise centre), whose pile of identical vectors shifts the round's direction reference:
see ``rescore_accepted``."""


class AnomalyRejection(Strategy):
    """Reject outlying and malformed updates, then let the wrapped strategy aggregate the rest.

    Works around any Flower ``Strategy`` the way Flower's DP wrappers do: it holds
    ``self.strategy``, passes sampling and evaluation through, and intercepts ``configure_train``
    (to capture the global model, the reference for shapes, dtypes and update norms) and
    ``aggregate_train``. Each round it:

    1. screens every reply (error replies, missing/extra records, wrong keys/shapes/dtypes, bad
       sample counts, nodes outside the roster, claims of another device's identity), then
       checks values in one streaming pass over the parameters (NaN/Inf, overflowing or absurd
       norms);
    2. scores every well-formed update against robust statistics of the round: norm, direction
       to the coordinate-wise median reference, dispersion, distance to the nearest other update
       (colluders sending one vector), claimed count (see :mod:`strategies.scoring`); cost
       O(n·d) for the norm pass plus O(n·k) on a seeded sample of ``k`` coordinates, with no
       pairwise O(n²·d) step;
    3. rejects scores >= 1 (at most ``max_reject_fraction`` of the round), records every device's
       outcome and anomaly share in the reliability tracker, and calls the wrapped strategy with
       the accepted replies only (sorted by device, metrics restricted to common keys so that
       Flower's consistency checks cannot raise).

    When the wrapped strategy takes scored replies (:class:`~strategies.handoff.ScoredAggregation`,
    as :class:`~strategies.ReliabilityWeightedFedAvg` does), the two share one tracker and the
    wrapper hands over its direction scores, so the norm pass runs once; any other strategy gets
    the accepted replies only.

    Devices are keyed by the node a reply answers, through the roster given to
    :meth:`set_roster` (node ids without one), never by what a reply claims; see
    :mod:`strategies.validation`. Whatever the wrapped strategy returns is cast back to the
    dtypes and shapes of the model sent (:func:`~strategies.arrays.restore_layout`).

    Parameters
    ----------
    strategy : Strategy
        The strategy that aggregates the accepted updates.
    thresholds : AnomalyThresholds or None
        When an update is an outlier (:class:`~strategies.thresholds.AnomalyThresholds`, where
        every default and its reason live). ``None``: the defaults.
    sample_size : int
        Coordinates sampled per round for direction and dispersion (>= 16; default 4096: the
        sampled cosine is within about 0.02 of the full-model cosine, well below the cosine
        scale floor, at a fixed O(n·k) cost however large the model).
    seed : int
        Seed of the coordinate sample (with the round number): reproducible, yet unknown to a
        device before it sends its update.
    max_update_norm : float or None
        Absolute bound on an update's L2 norm; larger updates are malformed. ``None``: no bound.
    weighted_by_key : str or None
        MetricRecord key of the claimed sample count; ``None`` takes the wrapped strategy's
        ``weighted_by_key`` or ``"num-examples"``.
    rescore_accepted : bool
        In a round where colluders were refused (updates that are copies of another, or crafted
        onto the coordinate-wise centre: ALIE's and IPM's), judge the accepted updates'
        agreement among themselves for the reliability history and a wrapped
        :class:`~strategies.ReliabilityWeightedFedAvg`'s quality. A pile of identical vectors
        shifts the coordinate-wise median that the others are judged against, and honest
        devices then lose quality for the colluders' sake; a lone update refused for its norm or
        direction barely moves a median, and rescoring after it would make the honest devices
        that resemble it look worse, so those rounds are left alone (what it changes, measured:
        ``docs/results.md``). ``False``: the round's scores as they are.
    tracker : ReliabilityTracker or None
        Where outcomes and anomaly shares are recorded. ``None``: the wrapped strategy's tracker
        when it takes scored replies, else a new one. A tracker given here is also installed in
        such a strategy.
    """

    # pylint: disable=too-many-arguments,too-many-instance-attributes
    def __init__(
        self,
        strategy: Strategy,
        *,
        thresholds: AnomalyThresholds | None = None,
        sample_size: int = 4096,
        seed: int = 0,
        max_update_norm: float | None = None,
        weighted_by_key: str | None = None,
        tracker: ReliabilityTracker | None = None,
        rescore_accepted: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise ValueError(f"strategy must be a flwr Strategy, got {type(strategy).__name__}")
        if thresholds is not None and not isinstance(thresholds, AnomalyThresholds):
            raise ValueError(
                f"thresholds must be an AnomalyThresholds, got {type(thresholds).__name__}"
            )
        self.strategy = strategy
        self.thresholds = thresholds or AnomalyThresholds()
        validate_sampling(sample_size, max_update_norm)
        self.sample_size = int(sample_size)
        self.seed = int(seed)
        self.max_update_norm = max_update_norm
        self.rescore_accepted = bool(rescore_accepted)
        self.weighted_by_key = weighted_by_key or str(
            getattr(strategy, "weighted_by_key", "num-examples")
        )
        scored = strategy if isinstance(strategy, ScoredAggregation) else None
        if tracker is None:
            tracker = scored.tracker if scored is not None else ReliabilityTracker()
        elif scored is not None:
            scored.tracker = tracker
        self.tracker = tracker
        self.roster: dict[int, str] | None = None
        self._ledger = RoundLedger()

    def __repr__(self) -> str:
        return f"AnomalyRejection({type(self.strategy).__name__})"

    def summary(self) -> None:
        """Log the rejection settings, then the wrapped strategy's."""
        t = self.thresholds
        log(INFO, "\t├──> Anomaly rejection:")
        log(
            INFO,
            "\t│\t├── Thresholds: norm z > %g, direction z < -%g, dispersion < %s, "
            "duplicate < %s, count > %s×",
            t.norm_threshold,
            t.direction_threshold,
            t.dispersion_ratio,
            t.duplicate_ratio,
            t.max_count_ratio,
        )
        log(
            INFO,
            "\t│\t└── Sample: %d coordinates (seed %d); at most %.0f%% rejected",
            self.sample_size,
            self.seed,
            100 * t.max_reject_fraction,
        )
        self.strategy.summary()

    # -- Flower Strategy API ---------------------------------------------------------------------

    def set_roster(self, roster: Mapping[int, str] | None) -> None:
        """Key devices by ``{node_id: device_key}`` from now on (``None``: by node id).

        Passed on to the wrapped strategy when it has a ``set_roster`` too.

        Raises
        ------
        ValueError
            If the roster is malformed or puts one device on two nodes.
        """
        self.roster = check_roster(roster)
        setter = getattr(self.strategy, "set_roster", None)
        if callable(setter):
            setter(roster)

    def observe_outcomes(self, server_round: int, outcomes: Mapping[int, str]) -> None:
        """What became of the nodes asked in ``server_round`` that sent no update.

        See :meth:`strategies.ledger.RoundLedger.observe_outcomes`; passed on to the wrapped
        strategy when it has an ``observe_outcomes`` too.
        """
        self._ledger.observe_outcomes(server_round, outcomes)
        observe = getattr(self.strategy, "observe_outcomes", None)
        if callable(observe):
            observe(server_round, outcomes)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate; remember the global model and the messages sent."""
        messages = self.strategy.configure_train(server_round, arrays, config, grid)
        return self._ledger.train_sent(server_round, arrays, messages)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Reject malformed and anomalous replies; the wrapped strategy aggregates the rest."""
        replies = list(replies)
        parsed, rejections, spec, norms = self._ledger.screen(
            server_round, replies, self.weighted_by_key, self.roster, self.max_update_norm
        )
        counts = np.array([p.num_examples for p in parsed], dtype=np.float64)
        scores = self._score(server_round, parsed, spec, norms, counts)
        accepted = [p for p, bad in zip(parsed, scores.rejected, strict=True) if not bad]
        for p, bad, reason in zip(parsed, scores.rejected, scores.reasons, strict=True):
            if bad:
                rejections.append(
                    Rejection(p.device, p.node_id, str(reason), RejectionKind.ANOMALOUS)
                )
        rejections.sort(key=lambda r: (device_order(r.device), r.reason))
        log_rejections(rejections)

        inner = self.strategy
        agreement = scores.agreement_z
        keep = ~scores.rejected
        if self.rescore_accepted and spec is not None and COLLUSION_CAUSES & set(scores.causes):
            agreement = agreement.copy()
            agreement[keep] = agreement_among(
                [p.arrays for p in accepted],
                spec,
                norms[keep],
                self.sample_size,
                self.seed,
                server_round,
                self.thresholds,
            )
        unanswered = self._ledger.unanswered(server_round, replies, self.roster)
        late = list(unanswered)
        self._record_history(server_round, parsed, scores, rejections, unanswered, agreement)
        if isinstance(inner, ScoredAggregation) and spec is not None:
            inner.receive_scored(
                server_round,
                ScoredReplies.build(
                    spec,
                    accepted,
                    agreement[keep].tolist(),
                    scores.score[keep].tolist(),
                    norms[keep].tolist(),
                ),
            )
        arrays, metrics, error = None, None, None
        if accepted:
            try:
                arrays, metrics = inner.aggregate_train(server_round, self._forward(accepted))
                if arrays is not None and spec is not None:
                    arrays = self._restore_layout(arrays, spec)
            except Exception as exc:  # the wrapped strategy must not end the run either
                error = f"{type(exc).__name__}: {exc}"
                log(
                    ERROR,
                    "aggregate_train of %r failed: %s\n%s",
                    inner,
                    error,
                    traceback.format_exc(),
                )
        self._ledger.store_report(
            server_round,
            self._report(server_round, replies, parsed, rejections, late, counts, scores, error),
        )
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate; remember the messages sent."""
        messages = self.strategy.configure_evaluate(server_round, arrays, config, grid)
        return self._ledger.evaluate_sent(server_round, messages)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Drop evaluate replies that Flower's metric averaging would raise on, then delegate."""
        kept = self._ledger.screen_evaluate(server_round, replies, self.weighted_by_key)
        if not kept:
            return None
        try:
            return self.strategy.aggregate_evaluate(server_round, kept)
        except Exception as exc:
            log(
                ERROR,
                "aggregate_evaluate of %r failed: %s: %s",
                self.strategy,
                type(exc).__name__,
                exc,
            )
            return None

    # -- fl-iot extensions -----------------------------------------------------------------------

    def round_report(self, server_round: int) -> RoundReport:
        """The report of ``server_round``, merged with the wrapped strategy's."""
        own = self._ledger.report(server_round)
        if own is None:
            own = empty_report(repr(self), server_round)
        inner_report = getattr(self.strategy, "round_report", None)
        if not callable(inner_report):
            return own
        try:
            inner = inner_report(server_round)
            if not isinstance(inner, RoundReport):
                inner = RoundReport.from_dict(dict(inner))
            return merge_reports(own, inner)
        except Exception as exc:
            log(WARNING, "round_report of %r failed: %s", self.strategy, exc)
            return own

    def state_dict(self) -> dict[str, Any]:
        """Serialisable server state: the tracker, and the wrapped strategy's.

        The roster is not part of it: a resumed run takes its own roll call and sets it.
        """
        inner = getattr(self.strategy, "state_dict", None)
        return {
            "tracker": self.tracker.state_dict(),
            "strategy": inner() if callable(inner) else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (into the wrapped strategy too, when it has state)."""
        inner = getattr(self.strategy, "load_state_dict", None)
        if callable(inner) and state.get("strategy") is not None:
            inner(state["strategy"])
        self.tracker.load_state_dict(state["tracker"])

    # -- internals -------------------------------------------------------------------------------

    def _restore_layout(self, arrays: ArrayRecord, spec: ModelSpec) -> ArrayRecord:
        """The wrapped strategy's model with the sent model's dtypes and shapes.

        Whatever the wrapped strategy does with integer buffers (Flower's FedAvg returns them
        as float64), the next round's replies are checked against the model returned here, so
        it must keep the layout they were trained from (:func:`~strategies.arrays.restore_layout`).
        """
        restored, problems = restore_layout(arrays, spec)
        for problem in problems:
            log(WARNING, "aggregate_train: %r returned a model whose %s", self.strategy, problem)
        return restored

    def _score(
        self,
        server_round: int,
        parsed: list[ParsedReply],
        spec: ModelSpec | None,
        norms: np.ndarray,
        counts: np.ndarray,
    ) -> AnomalyScores:
        n = len(parsed)
        if spec is None or n < self.thresholds.min_replies:
            return AnomalyScores.unscored(n)
        plan = SamplePlan.draw(spec, self.sample_size, self.seed, server_round)
        sample = gather_sample([p.arrays for p in parsed], spec, plan)
        stats = update_statistics(sample, norms, seed=(self.seed, server_round))
        stats.output_cosine = output_layer_cosine(
            [p.arrays for p in parsed], spec, self.sample_size, self.seed, server_round
        )
        return anomaly_scores(stats, counts, self.thresholds)

    def _forward(self, accepted: list[ParsedReply]) -> list[Message]:
        """The accepted replies, in a form the wrapped strategy aggregates without raising.

        A :class:`~strategies.handoff.ScoredAggregation` takes the very Messages it was handed
        the scores of. Any other strategy gets copies with one ArrayRecord and one MetricRecord
        restricted to the keys all replies share, since Flower's consistency checks raise on the
        slightest difference.
        """
        if isinstance(self.strategy, ScoredAggregation):
            return [p.message for p in accepted]
        clean_metrics = sanitized_metrics([p.metrics for p in accepted], self.weighted_by_key)
        return [
            clone_reply(
                p.message,
                with_records(
                    p.message.content,
                    metrics=(p.metrics_key, m),
                    arrays=(p.arrays_key, p.array_record),
                ),
            )
            for p, m in zip(accepted, clean_metrics, strict=True)
        ]

    def _record_history(
        self,
        server_round: int,
        parsed: list[ParsedReply],
        scores: AnomalyScores,
        rejections: list[Rejection],
        unanswered: Mapping[str, Outcome],
        quality_z: np.ndarray,
    ) -> None:
        share = history_anomaly(scores.score).tolist()
        z = quality_z.tolist()
        completed = [
            (p.device, share[i], z[i]) for i, p in enumerate(parsed) if not scores.rejected[i]
        ]
        directions = {p.device: z[i] for i, p in enumerate(parsed)}
        record_round(self.tracker, server_round, completed, rejections, unanswered, directions)

    def _report(
        self,
        server_round: int,
        replies: list[Message],
        parsed: list[ParsedReply],
        rejections: list[Rejection],
        late: list[str],
        counts: np.ndarray,
        scores: AnomalyScores,
        error: str | None,
    ) -> RoundReport:
        devices: dict[str, DeviceReport] = {}
        signals = {name: scores.signals[name].tolist() for name in SIGNALS}
        scored = np.isfinite(scores.signals["norm_z"]).tolist()
        rejected, score, count = scores.rejected.tolist(), scores.score.tolist(), counts.tolist()
        for i, p in enumerate(parsed):
            devices[p.device] = device_entry(
                RejectionKind.ANOMALOUS if rejected[i] else "accepted",
                num_examples=count[i],
                weight=0.0 if rejected[i] else None,
                reliability=self.tracker.reliability(p.device, server_round),
                anomaly_score=score[i] if scored[i] else None,
                signals={name: values[i] for name, values in signals.items()},
            )
        return round_report(
            repr(self),
            server_round,
            len(replies),
            len(parsed) - int(scores.rejected.sum()),
            devices,
            rejections,
            late,
            self.tracker,
            error,
        )
