"""The bookkeeping both trusted strategies share: what was sent, screening, history, reports.

:class:`~strategies.AnomalyRejection` and :class:`~strategies.ReliabilityWeightedFedAvg` differ in
what they decide (rejections; weights). What they must know to decide it is the same, and lives
here once: the global model and messages of each round (to check a reply's layout and to charge it
to the node it answers), the screening of replies, the outcome of each device in the reliability
history, the devices that never answered, and the skeleton of the round report.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from logging import INFO, WARNING
from typing import NamedTuple

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.supercore import log

from strategies.arrays import ArrayFormatError, ModelSpec
from strategies.reliability import Outcome, ReliabilityTracker
from strategies.report import DeviceReport, RoundReport, device_entry, device_order
from strategies.validation import (
    Outbox,
    ParsedReply,
    Rejection,
    RejectionKind,
    check_values,
    log_rejection,
    node_of,
    roster_device,
    screen_evaluate_replies,
    screen_train_replies,
)

KEEP_ROUNDS = 32
"""Rounds whose sent-message metadata and reports are kept in memory."""

REPORTED_OUTCOME = {
    "late": Outcome.LATE,
    "offline": Outcome.LATE,
    "failed": Outcome.FAILED,
}
"""The tracker outcome of each outcome a round driver reports for a device it got nothing from.
A device found offline counts like one that did not answer in time: both say more about the
fleet than about the device's honesty."""

TRACKER_OUTCOME = {
    RejectionKind.FAILED: Outcome.FAILED,
    RejectionKind.MALFORMED: Outcome.MALFORMED,
    RejectionKind.SPOOF: Outcome.MALFORMED,
    RejectionKind.ANOMALOUS: Outcome.REJECTED,
}
"""The reliability outcome of each rejection kind. ``unknown`` nodes are no devices and have no
history."""


class Screened(NamedTuple):
    """The well-formed replies of a round, and what was refused.

    ``parsed`` are in device order; ``norms`` are their update norms (zeros when no layout was
    readable); ``rejections`` are sorted by device and reason, not logged yet (a strategy adds
    its own and logs them all with :func:`log_rejections`).
    """

    parsed: list[ParsedReply]
    rejections: list[Rejection]
    spec: ModelSpec | None
    norms: np.ndarray


class RoundLedger:
    """Per-round memory of a strategy: the global model, the messages sent, the reports."""

    def __init__(self, keep_rounds: int = KEEP_ROUNDS) -> None:
        self.current_arrays: ArrayRecord | None = None
        self.sent = Outbox(keep_rounds)
        self.sent_evaluate = Outbox(keep_rounds)
        self._reports: OrderedDict[int, RoundReport] = OrderedDict()
        self._outcomes: OrderedDict[int, dict[int, str]] = OrderedDict()
        self._keep = keep_rounds

    def train_sent(
        self, server_round: int, arrays: ArrayRecord, messages: Iterable[Message]
    ) -> list[Message]:
        """Remember the global model and the train messages of ``server_round``; the messages."""
        self.current_arrays = arrays
        messages = list(messages)
        self.sent.record(server_round, messages)
        return messages

    def evaluate_sent(self, server_round: int, messages: Iterable[Message]) -> list[Message]:
        """Remember the evaluate messages of ``server_round``; the messages."""
        messages = list(messages)
        self.sent_evaluate.record(server_round, messages)
        return messages

    def spec(self) -> ModelSpec | None:
        """The layout of the global model sent last; ``None`` (logged) when it is not readable."""
        if self.current_arrays is None:
            return None
        try:
            return ModelSpec.from_arrayrecord(self.current_arrays)
        except ArrayFormatError as error:
            log(WARNING, "global model not readable (%s); inferring the layout from replies", error)
            return None

    def screen(
        self,
        server_round: int,
        replies: Sequence[Message],
        weighted_by_key: str,
        roster: Mapping[int, str] | None,
        max_update_norm: float | None,
    ) -> Screened:
        """Structure, identity and values of every reply (:mod:`strategies.validation`)."""
        parsed, rejections, spec = screen_train_replies(
            replies, self.spec(), weighted_by_key, roster, self.sent.sent(server_round)
        )
        norms = np.zeros(len(parsed))
        if spec is not None:
            parsed, value_rejections, norms = check_values(parsed, spec, max_update_norm)
            rejections = rejections + value_rejections
        rejections.sort(key=lambda r: (device_order(r.device), r.reason))
        return Screened(parsed, rejections, spec, norms)

    def screen_evaluate(
        self, server_round: int, replies: Iterable[Message], weighted_by_key: str
    ) -> list[Message]:
        """The evaluate replies Flower's metric averaging takes without raising (others logged)."""
        kept, dropped = screen_evaluate_replies(
            replies, weighted_by_key, self.sent_evaluate.sent(server_round)
        )
        for node, reason in dropped:
            log(INFO, "aggregate_evaluate: ignored node %d: %s", node, reason)
        return kept

    def observe_outcomes(self, server_round: int, outcomes: Mapping[int, str]) -> None:
        """Take what the round driver says became of the nodes it got no update from.

        ``outcomes`` maps node ids to ``late``, ``offline`` or ``failed``
        (:data:`REPORTED_OUTCOME`). Given for a round, they replace the inference of
        :meth:`unanswered`, which holds only for synchronous rounds: under deadlines and buffered
        aggregation a device asked this round may still be training, and its update may be
        aggregated rounds later.

        Raises
        ------
        ValueError
            For an outcome not in :data:`REPORTED_OUTCOME`.
        """
        for node, outcome in outcomes.items():
            if outcome not in REPORTED_OUTCOME:
                raise ValueError(
                    f"outcome of node {node} must be one of {sorted(REPORTED_OUTCOME)}, "
                    f"got {outcome!r}"
                )
        self._outcomes[server_round] = {int(n): str(o) for n, o in outcomes.items()}
        while len(self._outcomes) > self._keep:
            self._outcomes.popitem(last=False)

    def unanswered(
        self, server_round: int, replies: Iterable[Message], roster: Mapping[int, str] | None
    ) -> dict[str, Outcome]:
        """Devices asked that this aggregation has nothing from, with their tracker outcome.

        As reported (:meth:`observe_outcomes`), else inferred: every device asked to train in
        ``server_round`` whose node sent nothing back is late.
        """
        replies = list(replies)
        sent = self.sent.sent(server_round)
        reported = self._outcomes.pop(server_round, None)
        if reported is None:
            late = late_devices(self.sent.nodes(server_round), replies, sent, roster)
            return {device: Outcome.LATE for device in late}
        answered = {node_of(m, sent) for m in replies}
        found = {
            device: REPORTED_OUTCOME[outcome]
            for node, outcome in reported.items()
            if node not in answered and (device := roster_device(node, roster)) is not None
        }
        return dict(sorted(found.items(), key=lambda kv: device_order(kv[0])))

    def store_report(self, server_round: int, report: RoundReport) -> None:
        """Keep the report of ``server_round`` (the last :data:`KEEP_ROUNDS` rounds)."""
        self._reports[server_round] = report
        while len(self._reports) > self._keep:
            self._reports.popitem(last=False)

    def report(self, server_round: int) -> RoundReport | None:
        """The stored report of ``server_round``, or ``None``."""
        return self._reports.get(server_round)


def log_rejections(rejections: Iterable[Rejection]) -> None:
    """Log every rejection, one line each (:func:`~strategies.validation.log_rejection`)."""
    for r in rejections:
        log_rejection(r)


def record_round(
    tracker: ReliabilityTracker,
    server_round: int,
    completed: Sequence[tuple[str, float, float]],
    rejections: Iterable[Rejection],
    unanswered: Mapping[str, Outcome],
    direction: Mapping[str, float],
) -> None:
    """Record a round's outcomes in the reliability history.

    ``completed`` holds ``(device, anomaly share, direction z)`` of every aggregated reply;
    a rejected device is recorded with :data:`TRACKER_OUTCOME` of its kind and its direction
    z-score where it was scored (``direction``); an unanswered one with its outcome
    (:meth:`RoundLedger.unanswered`).
    """
    for device, share, z in completed:
        tracker.observe(device, server_round, Outcome.COMPLETED, share, z)
    for r in rejections:
        if r.kind == RejectionKind.UNKNOWN:
            continue  # a node outside the roster is no device: nothing to remember
        outcome = TRACKER_OUTCOME[r.kind]
        tracker.observe(r.device, server_round, outcome, direction=direction.get(r.device))
    for device, outcome in unanswered.items():
        tracker.observe(device, server_round, outcome)


def round_report(
    strategy: str,
    server_round: int,
    num_replies: int,
    num_accepted: int,
    devices: dict[str, DeviceReport],
    rejections: Sequence[Rejection],
    late: list[str],
    tracker: ReliabilityTracker,
    error: str | None = None,
) -> RoundReport:
    """The round's :class:`~strategies.report.RoundReport`.

    ``devices`` holds the entries of the parsed replies; every rejected device that has none gets
    one with its kind, weight 0 and its reliability. Nodes outside the roster are no devices and
    appear only under ``unknown_nodes``; ``error``, when given, says why aggregation failed.
    """
    known = [r for r in rejections if r.kind != RejectionKind.UNKNOWN]
    for r in known:
        if r.device not in devices:
            reliability = tracker.reliability(r.device, server_round)
            devices[r.device] = device_entry(r.kind, weight=0.0, reliability=reliability)
    return RoundReport(
        strategy=strategy,
        round=server_round,
        num_replies=num_replies,
        num_accepted=num_accepted,
        rejected={r.device: r.reason for r in known},
        late=late,
        devices=dict(sorted(devices.items(), key=lambda kv: device_order(kv[0]))),
        error=error,
        unknown_nodes={
            str(r.node_id): r.reason for r in rejections if r.kind == RejectionKind.UNKNOWN
        },
    )


def empty_report(strategy: str, server_round: int) -> RoundReport:
    """The report of a round the strategy did not aggregate."""
    return RoundReport(strategy=strategy, round=server_round)


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


def validate_sampling(sample_size: int, max_update_norm: float | None) -> None:
    """Checks of the scoring parameters both strategies take.

    Raises
    ------
    ValueError
        If ``sample_size`` < 16 or ``max_update_norm`` is not positive.
    """
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 16:
        raise ValueError(f"sample_size must be an int >= 16, got {sample_size!r}")
    if max_update_norm is not None and not max_update_norm > 0:
        raise ValueError(f"max_update_norm must be > 0 or None, got {max_update_norm!r}")
