"""The round loop: configure, send, aggregate, evaluate, report.

This is the one place that drives rounds, in every round mode. It calls the strategy's
``configure_*`` and ``aggregate_*`` like Flower's ``Strategy.start`` does, and adds what fl-iot
needs around them:

- between the strategy's sample and the grid, the scheduler (:mod:`fl_iot.schedule`) decides on
  the fleet's simulated clock whom to ask, when each update arrives and which updates the round
  aggregates (``rounds=sync|deadline|fedbuff``); under ``fleet=ideal`` and ``rounds=sync`` it
  asks exactly the sample and uses every reply;
- a compressed update is decoded, with the codec of its device's class, against the model its
  node was sent, before the scheduler and the strategy see it (:meth:`RoundLoop._decoded`);
  every device's bytes are measured as they came (:meth:`RoundLoop._record_traffic`);
- after each round, ``after_round`` writes the server's checkpoint (:mod:`fl_iot.checkpoint`);
- every reply is charged to the node its message was sent to, and that node's device comes
  from the roll call, never from the reply (:func:`strategies.answered_node`); a reply that
  claims another device's id is ignored and logged as a spoof;
- replies are put in device order before aggregation, so float sums are reproducible;
- node sampling is seeded per round (Flower's strategies sample with the global ``random``), over
  the whole roster: a device that stops answering is still sampled and counted as failed or
  missing;
- a strategy that raises on a bad round does not end the run: the round keeps the previous model
  and the error is recorded;
- every round produces a :class:`RoundRecord` for the sinks, with per-device detail; a failed
  device's error is kept there as its type and message, its full text is logged once per run;
- nothing a device sends can crash the server: malformed values are ignored and logged.
"""

from __future__ import annotations

import gc
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from clients.compression import (
    COMPRESSED,
    COMPRESSED_MODEL,
    Compression,
    decode_model,
    decode_update,
    encode_model,
    is_compressed,
)
from clients.gateway import AGGREGATE, EDGE
from clients.privacy.reporting import privacy_summary
from fl_iot import protocol as P
from fl_iot.federation import Federation
from fl_iot.fleet import DeviceOutcome, ideal_fleet
from fl_iot.message_size import header_bytes, payload_bytes, reply_bytes, wire_bytes
from fl_iot.metrics import scores
from fl_iot.records import EVALUATION_TRAFFIC_KEYS, TRAFFIC_KEYS, RoundRecord, RoundSink
from fl_iot.roster import DeviceOrderedGrid, Roster
from fl_iot.rounds import RoundsConfig
from fl_iot.schedule import Collected, RoundScheduler
from strategies import answered_node, bounded_quantity, sent_destinations
from strategies.report import RoundReport
from strategies.validation import claimed_device

log = logging.getLogger(__name__)

CentralEvaluation = Callable[[int, ArrayRecord], dict[str, float]]
RoundEnd = Callable[[RoundRecord, ArrayRecord], None]
"""Called after each round, once the sinks have its record: the server's checkpoint."""

EVAL_WEIGHT_CAP = 3.0
"""Most examples a device's evaluation counts for, as a multiple of the round's median count.

Devices report their own confusion matrices and example counts, and the server can check neither:
pooled unbounded, one device claiming a huge count with an all-correct matrix would set the
federated scores alone. Scaled to at most ``3 × median`` examples, a liar weighs at most as much as
three typical devices, the bound ``quantity_cap`` puts on a device's training weight, while
honest devices with up to three times the typical test split count fully.
"""

MAX_COUNT = 2**63 - 1
"""Largest example count or confusion entry accepted (what Flower's ``sint64`` carries)."""

DOWNLINK_PHASE = 11
"""Seed phase of the downlink codec's stochastic rounding (apart from sampling's phases)."""

ERROR_CHARS = 300
"""Longest error text a round record keeps per device; the full text is logged once per run."""


def central_privacy_spent(strategy: Strategy) -> dict[str, float]:
    """What a server-side DP strategy says it spent so far; empty for any other strategy.

    Read through ``privacy_spent()``, the method of Flower's DP wrappers (``None`` there when they
    have no accountant) and of :class:`strategies.central_dp.CentralDP`, which also reports the
    figure under Poisson sampling (``privacy_spent_if_poisson_sampling``).
    """
    privacy_spent = getattr(strategy, "privacy_spent", None)
    spent = privacy_spent() if callable(privacy_spent) else None
    if spent is None:
        return {}
    figures = {"central-epsilon": float(spent.epsilon), "central-delta": float(spent.delta)}
    if_poisson = getattr(strategy, "privacy_spent_if_poisson_sampling", None)
    if callable(if_poisson):
        figures["central-epsilon-if-poisson"] = float(if_poisson().epsilon)
    return figures


def report_outcomes(strategy: Strategy, server_round: int, outcomes: dict[int, str]) -> None:
    """Tell a strategy what became of the devices it asked that it gets no update from.

    ``outcomes`` maps node ids to ``late``, ``failed`` or ``offline``. fl-iot's strategies
    (``observe_outcomes``) then record these in their reliability history instead of inferring
    lateness from the replies, which only a synchronous round allows; Flower's strategies keep
    no history and have no such method.
    """
    observe = getattr(strategy, "observe_outcomes", None)
    if callable(observe):
        observe(server_round, outcomes)


class Answer(NamedTuple):
    """A reply and the node it answers (the destination of the message it replies to)."""

    node_id: int
    reply: Message


class DeviceEvaluation(NamedTuple):
    """One device's parsed evaluate reply."""

    device_id: int
    num_examples: int
    loss: float
    confusion: np.ndarray


@dataclass
class RoundLoop:
    """Runs ``num_rounds`` synchronous rounds of a strategy over a grid.

    Federated evaluation pools the confusion matrices the evaluated devices report, each scaled
    to count for at most ``eval_weight_cap`` times the round's median claimed example count
    (:data:`EVAL_WEIGHT_CAP`, :func:`pool_evaluations`): no device can set the federated scores
    by claiming a huge test split. The pooled matrix is then a weighted count (float).
    """

    grid: Grid
    strategy: Strategy
    roster: Roster
    federation: Federation
    num_rounds: int
    seed: int
    num_classes: int
    round_timeout_s: float
    central_evaluation: CentralEvaluation | None = None
    sinks: Sequence[RoundSink] = ()
    train_config: ConfigRecord = field(default_factory=ConfigRecord)
    evaluate_config: ConfigRecord = field(default_factory=ConfigRecord)
    eval_weight_cap: float = EVAL_WEIGHT_CAP
    scheduler: RoundScheduler | None = None
    after_round: RoundEnd | None = None
    compression: Mapping[str, Compression | None] = field(default_factory=dict)
    downlink: Compression | None = None
    _logged_errors: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.eval_weight_cap >= 1.0:  # also refuses NaN
            raise ValueError(f"eval_weight_cap must be >= 1, got {self.eval_weight_cap!r}")

    def run(self, arrays: ArrayRecord, first_round: int = 1, elapsed_s: float = 0.0) -> ArrayRecord:
        """Run rounds ``first_round..num_rounds`` from ``arrays``; return the final model.

        ``elapsed_s`` is the wall time the rounds before ``first_round`` took (a resumed run's),
        which the records' ``elapsed_s`` continue.
        """
        grid = DeviceOrderedGrid(self.grid, self.roster)
        started = time.perf_counter() - elapsed_s
        for server_round in range(first_round, self.num_rounds + 1):
            round_started = time.perf_counter()
            record = RoundRecord(server_round, self.num_rounds, 0.0, 0.0)
            arrays = self._train(grid, server_round, arrays, record)
            self._evaluate(grid, server_round, arrays, record)
            if self.central_evaluation is not None:
                record.central = self.central_evaluation(server_round, arrays)
            if not all(np.isfinite(a.numpy()).all() for a in arrays.values()):
                # Scores of a NaN model are argmax artefacts (the first class): say so.
                record.errors.append("the global model has non-finite weights (diverged)")
            record.round_time_s = time.perf_counter() - round_started
            record.elapsed_s = time.perf_counter() - started
            for sink in self.sinks:
                sink.log_round(record)
            if self.after_round is not None:
                self.after_round(record, arrays)
        return arrays

    def _seed_sampling(self, server_round: int, phase: int) -> None:
        # Flower's sample_nodes() draws from the global `random`; the grid lists nodes in
        # device order, so seeding here fixes which devices each round samples.
        random.seed(
            int(np.random.SeedSequence([self.seed, server_round, phase]).generate_state(1)[0])
        )

    def _train(
        self, grid: Grid, server_round: int, arrays: ArrayRecord, record: RoundRecord
    ) -> ArrayRecord:
        scheduler = self._scheduler()
        scheduler.open_round(scheduler.devices_needed())
        self._seed_sampling(server_round, 0)
        messages = list(
            self.strategy.configure_train(server_round, arrays, self.train_config.copy(), grid)
        )
        messages = self._compressed_models(server_round, 0, messages)
        plan = scheduler.plan(server_round, messages, arrays)
        answers = self._send(grid, plan.to_send)
        # Bytes as they came, compressed: what the upload took on the simulated clock.
        uploaded = {
            a.node_id: reply_bytes(a.reply).content for a in answers if a.reply.has_content()
        }
        model_bytes = payload_bytes(RecordDict({P.ARRAYS: arrays}), [P.ARRAYS])
        self._record_traffic(record, plan.to_send, answers, uploaded, model_bytes)
        answers = self._decoded(server_round, plan.to_send, answers)
        collected = scheduler.collect(server_round, plan, answers, uploaded)
        report_outcomes(self.strategy, server_round, collected.unanswered)
        replies = collected.replies
        fresh = [a.reply for a in answers]
        record.sampled = plan.selected
        record.replied = sum(1 for r in fresh if not r.has_error())
        record.declined = sum(
            1 for r in fresh if r.has_error() and r.error.code == P.DECLINED_ERROR_CODE
        )
        record.failed = sum(1 for r in fresh if r.has_error()) - record.declined
        record.missing = len(plan.to_send) - len(answers)
        self._record_train_replies(server_round, plan.to_send, answers, record)
        self._record_fleet(record, collected, plan.opened_s)
        try:
            with forced_gc_suppressed():
                new_arrays, _ = self.strategy.aggregate_train(server_round, replies)
        except Exception as error:  # a strategy must not be able to end the run
            log.exception(
                "round %d: aggregate_train failed; keeping the previous model", server_round
            )
            record.errors.append(f"aggregate_train: {type(error).__name__}: {error}")
            new_arrays = None
        else:
            # Flower's strategies return None without raising when they decline to aggregate
            # (no replies, or Bulyan/Krum with too few of them): say so, or a run whose model
            # never moved looks like any other.
            if new_arrays is None:
                log.warning(
                    "round %d: the strategy returned no model; keeping the previous one",
                    server_round,
                )
                record.errors.append(
                    f"aggregate_train: {type(self.strategy).__name__} returned no model "
                    f"({record.replied} replies); the previous model is kept"
                )
        report = getattr(self.strategy, "round_report", None)
        if callable(report):
            try:
                reported = report(server_round)
                record.strategy = (
                    reported.to_dict() if isinstance(reported, RoundReport) else dict(reported)
                )
            except Exception as error:
                record.errors.append(f"round_report: {type(error).__name__}: {error}")
        participants = {
            device
            for a in answers
            if not a.reply.has_error() and (device := self.roster.device_of(a.node_id)) is not None
        }
        # Refused by their gateway (gateways.edge_rejection): judged there, not by the strategy.
        at_edge = {
            device
            for a in answers
            if a.reply.has_content()
            and EDGE in a.reply.content
            and (device := self.roster.device_of(a.node_id)) is not None
        }
        per_participant = getattr(self.strategy, "detection_scores", None)
        record.detection = (
            per_participant(record.strategy, participants - at_edge, self.federation.attackers)
            if callable(per_participant)  # participants that are not devices (gateways)
            else detection_scores(record.strategy, participants, self.federation)
        )
        if at_edge:
            record.detection["edge_rejected"] = float(len(at_edge))
            record.detection["edge_caught"] = float(len(at_edge & self.federation.attackers))
        record.privacy.update(central_privacy_spent(self.strategy))
        if new_arrays is None:
            return arrays
        return new_arrays

    def _decoded(
        self, server_round: int, sent: Sequence[Message], answers: list[Answer]
    ) -> list[Answer]:
        """The answers with every compressed update decoded against the model its node got.

        The codec is the one the roster's device class uses, never what the reply names. A
        payload that does not decode (another codec, another model, an index out of range, a
        non-finite scale), or a compressed update from a class that sends none, becomes an
        error reply (:data:`P.MALFORMED_UPDATE_ERROR_CODE`), logged: every strategy counts it
        as a failed device and none sees its bytes.
        """
        by_node = {m.metadata.dst_node_id: m for m in sent}
        received_models: dict[int, ArrayRecord | None] = {}
        decoded: list[Answer] = []
        for answer in answers:
            reply, message = answer.reply, by_node.get(answer.node_id)
            if reply.has_error() or not is_compressed(reply.content) or message is None:
                decoded.append(answer)
                continue
            device = self.roster.device_of(answer.node_id)
            setting = (
                self.compression.get(self.federation[device].device_class)
                if device is not None
                else None
            )
            if id(message.content) not in received_models:
                received_models[id(message.content)] = self._received_model(message)
            received = received_models[id(message.content)]
            try:
                if setting is None or received is None:
                    raise ValueError("a compressed update from a device that sends none")
                reply.content = decode_update(reply.content, received, setting, P.ARRAYS)
            except ValueError as error:
                log.warning(
                    "round %d: refusing the update of device %s (node %s): malformed "
                    "compressed payload: %s",
                    server_round,
                    device,
                    answer.node_id,
                    error,
                )
                refusal = Error(
                    code=P.MALFORMED_UPDATE_ERROR_CODE,
                    reason=f"malformed compressed update: {error}",
                )
                decoded.append(Answer(answer.node_id, Message(refusal, reply_to=message)))
                continue
            decoded.append(answer)
        return decoded

    def _compressed_models(
        self, server_round: int, phase: int, messages: list[Message]
    ) -> list[Message]:
        """``messages`` with their model compressed by the downlink codec, if one is set.

        Encoded once per distinct content (the strategy's messages share one), seeded per round
        and phase, so every device of a round gets the same bytes, on Ray as in process.
        """
        if self.downlink is None:
            return messages
        encoded: dict[int, RecordDict] = {}
        for message in messages:
            key = id(message.content)
            if key not in encoded:
                seed = np.random.SeedSequence([self.seed, server_round, phase, DOWNLINK_PHASE])
                encoded[key] = encode_model(
                    message.content, self.downlink, np.random.default_rng(seed), P.ARRAYS
                )
            message.content = encoded[key]
        return messages

    def _received_model(self, message: Message) -> ArrayRecord | None:
        """The model a node got from ``message``: decoded as the device decodes it."""
        content = message.content
        if self.downlink is not None and COMPRESSED_MODEL in content:
            content = decode_model(content, self.downlink, P.ARRAYS)
        model = content.get(P.ARRAYS)
        return model if isinstance(model, ArrayRecord) else None

    def _record_traffic(
        self,
        record: RoundRecord,
        sent: Sequence[Message],
        answers: Sequence[Answer],
        uploaded: Mapping[int, int],
        model_bytes: int,
    ) -> None:
        """Each device's bytes this round: the model or update alone, and whole messages.

        ``payload`` is the model down and the update up (its ``ArrayRecord``, or the compressed
        record that replaces it); ``message`` is the whole serialised message, header, config
        and metrics included. Replies are measured as they came, before decoding (``uploaded``:
        their content's bytes by node, error replies absent). ``model_bytes`` is the uncompressed
        model's payload, which an uncompressed update or download would weigh.
        """
        payload = (P.ARRAYS, COMPRESSED, COMPRESSED_MODEL)
        down: dict[int, tuple[int, int]] = {}
        for message in sent:
            key = id(message.content)
            if key not in down:
                content = wire_bytes(message)
                down[key] = (payload_bytes(message.content, payload), content)
            _, entry = self._device_entry(record, message.metadata.dst_node_id)
            entry["payload_bytes_down"] = float(down[key][0])
            entry["message_bytes_down"] = float(down[key][1] + header_bytes(message))
            entry["uncompressed_payload_bytes_down"] = float(model_bytes)
        for answer in answers:
            _, entry = self._device_entry(record, answer.node_id)
            reply = answer.reply
            measured = reply_bytes(reply)
            entry["message_bytes_up"] = float(measured.header + uploaded.get(answer.node_id, 0))
            if reply.has_content():
                entry["payload_bytes_up"] = float(measured.of(payload))
                # What the update would have weighed uncompressed: a whole model (its share of
                # one, for a device whose gateway ships one average for several).
                entry["uncompressed_payload_bytes_up"] = (
                    entry["payload_bytes_up"] if AGGREGATE in reply.content else float(model_bytes)
                )
        record.communication = communication_totals(record.devices.values())

    def _record_evaluation_traffic(
        self, record: RoundRecord, sent: Sequence[Message], answers: Sequence[Answer]
    ) -> None:
        """Each evaluated device's whole-message bytes: the model down, its scores up."""
        down: dict[int, int] = {}
        for message in sent:
            if id(message.content) not in down:
                down[id(message.content)] = wire_bytes(message)
            _, entry = self._device_entry(record, message.metadata.dst_node_id)
            entry["eval_message_bytes_down"] = float(
                down[id(message.content)] + header_bytes(message)
            )
        for answer in answers:
            _, entry = self._device_entry(record, answer.node_id)
            reply = answer.reply
            measured = reply_bytes(reply)
            entry["eval_message_bytes_up"] = float(measured.header + measured.content)
        totals = communication_totals(record.devices.values())
        for key in EVALUATION_TRAFFIC_KEYS:
            record.communication[key] = totals[key]

    def _scheduler(self) -> RoundScheduler:
        if self.scheduler is None:
            self.scheduler = RoundScheduler(
                ideal_fleet(self.roster.device_ids()), RoundsConfig(), self.roster, self.seed
            )
        return self.scheduler

    def _record_fleet(self, record: RoundRecord, collected: Collected, opened_s: float) -> None:
        """The round's simulated times and outcome counts, and each device's part in it."""
        outcomes = [entry.outcome for entry in collected.devices.values()]
        record.fleet = {
            "clock_s": collected.closed_s,
            "opened_s": opened_s,
            "round_duration_s": collected.closed_s - opened_s,
            **{o.value: float(outcomes.count(o.value)) for o in DeviceOutcome},
            "stale_used": float(collected.stale_used),
            "bytes_down": float(sum(e.bytes_down for e in collected.devices.values())),
            "bytes_up": float(sum(e.bytes_up for e in collected.devices.values())),
        }
        for device, entry in collected.devices.items():
            self._device_entry(record, self.roster.node_of(device))[1].update(entry.to_dict())

    def _evaluate(
        self, grid: Grid, server_round: int, arrays: ArrayRecord, record: RoundRecord
    ) -> None:
        self._seed_sampling(server_round, 1)
        messages = list(
            self.strategy.configure_evaluate(
                server_round, arrays, self.evaluate_config.copy(), grid
            )
        )
        if not messages:
            return
        messages = self._compressed_models(server_round, 1, messages)
        answers = self._send(grid, messages)
        self._record_evaluation_traffic(record, messages, answers)
        evaluations: list[DeviceEvaluation] = []
        for answer in answers:
            key, entry = self._device_entry(record, answer.node_id)
            if answer.reply.has_error():
                entry["eval_error"] = self._error_text(server_round, key, answer.reply)
                continue
            evaluation = self._evaluate_reply(server_round, answer)
            if isinstance(evaluation, str):
                entry["eval_ignored"] = evaluation
                continue
            evaluations.append(evaluation)
            entry["eval_loss"] = evaluation.loss
        if evaluations:
            confusion, weights = pool_evaluations(
                [e.confusion for e in evaluations],
                [e.num_examples for e in evaluations],
                self.eval_weight_cap,
            )
            counted = weights * np.array([float(e.num_examples) for e in evaluations])
            examples = float(counted.sum())
            if examples > 0:
                with np.errstate(over="ignore", invalid="ignore"):
                    loss = float(np.dot(counted / examples, [e.loss for e in evaluations]))
                record.federated = {**scores(confusion), "loss": loss, "num_examples": examples}
            per_class: dict[str, np.ndarray] = {}
            for evaluation, weight in zip(evaluations, weights, strict=True):
                device_class = self.federation[evaluation.device_id].device_class
                pooled = per_class.setdefault(device_class, np.zeros_like(confusion))
                pooled += weight * evaluation.confusion
            for device_class, matrix in per_class.items():
                record.by_class.setdefault(device_class, {}).update(
                    {f"federated_{k}": v for k, v in scores(matrix).items()}
                )
        try:
            with forced_gc_suppressed():
                self.strategy.aggregate_evaluate(server_round, [a.reply for a in answers])
        except Exception as error:
            record.errors.append(f"aggregate_evaluate: {type(error).__name__}: {error}")

    def _send(self, grid: Grid, messages: list[Message]) -> list[Answer]:
        """Send ``messages`` and return the replies with the node each answers, in device order.

        A reply is charged to the destination of the message it answers, not to its own source:
        the SuperLink's error reply for a dead node comes from the SuperLink (node 1). A reply
        that answers none of ``messages``, or a second reply to one of them, is dropped (logged):
        its message then counts as unanswered.
        """
        if not messages:
            return []
        replies = list(grid.send_and_receive(messages, timeout=self.round_timeout_s))
        sent = sent_destinations(messages)  # the grid wrote the ids into the messages
        answers: list[Answer] = []
        answered: set[str] = set()
        for reply in replies:
            node_id = answered_node(reply, sent)
            reply_to = reply.metadata.reply_to_message_id
            if node_id is None or reply_to in answered:
                log.warning(
                    "ignoring a reply from node %s to message %r: it answers none of the "
                    "messages sent, or one already answered",
                    reply.metadata.src_node_id,
                    reply_to,
                )
                continue
            answered.add(reply_to)
            answers.append(Answer(node_id, reply))
        return sorted(answers, key=lambda a: self.roster.sort_key(a.node_id))

    def _device_entry(self, record: RoundRecord, node_id: int) -> tuple[str, dict[str, Any]]:
        """The per-device entry of ``node_id`` in ``record`` (``node-<id>`` off the roster)."""
        device_id = self.roster.device_of(node_id)
        key = str(device_id) if device_id is not None else f"node-{node_id}"
        entry = record.devices.setdefault(key, {})
        if device_id is not None and "device_class" not in entry:
            entry["device_class"] = self.federation[device_id].device_class
            entry["attacker"] = self.federation[device_id].attacker
        return key, entry

    def _error_text(self, server_round: int, key: str, reply: Message) -> str:
        """The error's type and message for the record; its full text is logged once per run."""
        reason = str(reply.error.reason or "")
        summary = error_summary(reason)
        if reason not in self._logged_errors:
            self._logged_errors.add(reason)
            log.warning(
                "round %d: device %s replied with error code %s: %s (full text, logged once "
                "per run):\n%s",
                server_round,
                key,
                reply.error.code,
                summary,
                reason,
            )
        return summary

    def _identity_problem(self, server_round: int, answer: Answer) -> str | None:
        """Why a reply's claimed identity is unacceptable, or ``None`` (logged when not).

        The device is the roster's: a reply from a node off the roster, or one whose ``device``
        record names another device (a spoof), is ignored. A reply without a ``device`` record
        claims nothing and is fine.
        """
        device_id = self.roster.device_of(answer.node_id)
        if device_id is None:
            log.warning(
                "round %d: ignoring a reply from node %s, which is not in the roll call",
                server_round,
                answer.node_id,
            )
            return f"node {answer.node_id} is not in the roll call"
        try:
            claimed = claimed_device(answer.reply.content)
        except ValueError as error:
            log.warning(
                "round %d: ignoring the reply of device %s (node %s): %s",
                server_round,
                device_id,
                answer.node_id,
                error,
            )
            return str(error)
        if claimed is not None and claimed != device_id:
            log.warning(
                "round %d: spoof: node %s is device %s by the roll call but its reply claims "
                "device %s; the reply is ignored",
                server_round,
                answer.node_id,
                device_id,
                claimed,
            )
            return f"spoof: claims to be device {claimed}"
        return None

    def _record_train_replies(
        self,
        server_round: int,
        messages: Sequence[Message],
        answers: Sequence[Answer],
        record: RoundRecord,
    ) -> None:
        answered = {a.node_id for a in answers}
        for message in messages:
            if message.metadata.dst_node_id not in answered:
                _, entry = self._device_entry(record, message.metadata.dst_node_id)
                entry["missing"] = True
        losses: list[tuple[float, float]] = []
        entries: list[dict[str, Any]] = []
        for answer in answers:
            key, entry = self._device_entry(record, answer.node_id)
            if answer.reply.has_error():
                entry["error"] = self._error_text(server_round, key, answer.reply)
                continue
            problem = self._identity_problem(server_round, answer)
            if problem is not None:
                entry["ignored"] = problem
                continue  # its claims are not recorded; the strategy sees the reply and judges
            entry.update(_numbers(answer.reply, P.METRICS))
            entry.update(_numbers(answer.reply, P.TRAINER))
            edge = answer.reply.content.get(EDGE)
            if isinstance(edge, ConfigRecord):
                entry["edge_rejected"] = str(edge.get("reason", ""))
            entries.append(entry)
            n, loss = entry.get(P.NUM_EXAMPLES), entry.get(P.TRAIN_LOSS)
            if n is not None and loss is not None and n > 0:
                losses.append((n, loss))
        if losses:
            weights = np.array([n for n, _ in losses])
            with np.errstate(over="ignore", invalid="ignore"):
                mean_loss = float(np.dot(weights / weights.sum(), [loss for _, loss in losses]))
            record.train = {"loss": mean_loss, "num_examples": float(weights.sum())}
        record.privacy = privacy_summary(e for e in entries if "epsilon" in e)
        for device_class in sorted({e["device_class"] for e in entries if "device_class" in e}):
            of_class = [e for e in entries if e.get("device_class") == device_class]
            stats = record.by_class.setdefault(device_class, {})
            stats["devices_trained"] = float(len(of_class))
            times = [e[P.COMPUTE_TIME] for e in of_class if P.COMPUTE_TIME in e]
            if times:
                stats["max_compute_time_s"] = float(max(times))
            epsilons = [e["epsilon"] for e in of_class if "epsilon" in e]
            if epsilons:
                stats["epsilon_max"] = float(max(epsilons))

    def _evaluate_reply(self, server_round: int, answer: Answer) -> DeviceEvaluation | str:
        """Parse an evaluate reply; for a spoof or malformed content, why it is ignored (logged)."""
        problem = self._identity_problem(server_round, answer)
        if problem is not None:
            return problem
        device_id = self.roster.device_of(answer.node_id)
        assert device_id is not None  # checked by _identity_problem
        try:
            n, loss, matrix = parse_evaluation(answer.reply, self.num_classes)
        except ValueError as error:
            log.warning(
                "round %d: ignoring the malformed evaluate reply of device %s (node %s): %s",
                server_round,
                device_id,
                answer.node_id,
                error,
            )
            return f"malformed: {error}"
        return DeviceEvaluation(device_id, n, loss, matrix)


def communication_totals(entries: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The sums of the per-device byte counts (:data:`TRAFFIC_KEYS`) over ``entries``."""
    totals = dict.fromkeys(TRAFFIC_KEYS, 0.0)
    for entry in entries:
        for key in TRAFFIC_KEYS:
            totals[key] += float(entry.get(key, 0.0))
    return totals


def pool_evaluations(
    confusions: Sequence[np.ndarray], counts: Sequence[int], cap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pool device confusion matrices with each device's weight bounded.

    A device counts for ``min(n_i, cap · median_j n_j)`` examples: its matrix is scaled by
    ``min(1, cap · median / n_i)``. The median is over the devices with examples, so a device that
    lies about its count can only move it by lying with most of the others.

    Parameters
    ----------
    confusions : Sequence[np.ndarray]
        One ``(C, C)`` count matrix per device, each summing to its count.
    counts : Sequence[int]
        The devices' claimed example counts (>= 0).
    cap : float
        Multiple of the median (>= 1).

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        The pooled ``(C, C)`` float64 matrix and each device's scale factor in ``[0, 1]``
        (1 for a device without examples: it adds nothing either way).

    Examples
    --------
    >>> pooled, w = pool_evaluations(
    ...     [np.eye(2) * 5, np.eye(2) * 5, np.array([[0, 0], [100, 0]])], [10, 10, 100], cap=3.0
    ... )
    >>> w.tolist(), pooled.tolist()
    ([1.0, 1.0, 0.3], [[10.0, 0.0], [30.0, 10.0]])
    """
    n = np.asarray([float(c) for c in counts], dtype=np.float64)
    weights = np.ones_like(n)
    positive = n > 0
    if positive.any():
        weights[positive] = bounded_quantity(n[positive], cap) / n[positive]
    shape = np.shape(confusions[0]) if len(confusions) else (0, 0)
    pooled = np.zeros(shape, dtype=np.float64)
    for matrix, weight in zip(confusions, weights, strict=True):
        pooled += weight * np.asarray(matrix, dtype=np.float64)
    return pooled, weights


def error_summary(reason: str, limit: int = ERROR_CHARS) -> str:
    r"""The type and message of an error reply's text, at most ``limit`` characters.

    Flower's error reason for a ClientApp that raised under Ray is the whole chained Ray traceback
    (some 2-3 KB), wrapped as ``<class '...'>:<'...'>``. The first traceback of a chain is the root
    cause, and its last line is the exception, e.g. ``ValueError: Invalid learning rate: -0.1``.
    A one-line reason (Flower's "Node Unavailable", a declined device) is kept as it is.

    Examples
    --------
    >>> error_summary("Traceback ...\n  File 'x.py'\nValueError: bad\n\n"
    ...               "The above exception was the direct cause of the following exception:\n\n"
    ...               "RuntimeError: wrapped")
    'ValueError: bad'
    """
    text = _ANSI.sub("", reason)
    wrapped = _FLOWER_WRAPPER.fullmatch(text)
    if wrapped:
        text = wrapped.group(2)
    root = _CHAIN.split(text)[0]
    lines = [line.strip() for line in root.splitlines() if line.strip()]
    summary = lines[-1] if lines else (wrapped.group(1) if wrapped else "")
    return summary if len(summary) <= limit else summary[: limit - 3] + "..."


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FLOWER_WRAPPER = re.compile(r"<class '([^']*)'>:<'(.*)'>", re.DOTALL)
_CHAIN = re.compile(
    r"^(?:The above exception was the direct cause of the following exception:"
    r"|During handling of the above exception, another exception occurred:)\s*$",
    re.MULTILINE,
)


@contextmanager
def forced_gc_suppressed() -> Iterator[None]:
    """Make explicit ``gc.collect()`` calls no-ops for the duration (automatic GC still runs).

    Flower's ``ArrayRecord.to_numpy_ndarrays(keep_input=False)`` forces a full collection for
    every array it converts (Bulyan and QFedAvg use it on every selected update). In a server
    process that holds torch and Ray a full collection costs 0.1-0.2 s, which made a Bulyan
    round of 20 devices take 9-12 s instead of well under one; the aggregate is the same.
    """
    original = gc.collect
    gc.collect = lambda generation=2: 0
    try:
        yield
    finally:
        gc.collect = original


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or ``None`` (bools, non-numbers, NaN, Inf, huge ints)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _numbers(reply: Message, record_name: str) -> dict[str, float]:
    """The finite numeric entries of one of a reply's records (absent or malformed: none)."""
    values = reply.content.get(record_name)
    if not isinstance(values, MetricRecord | ConfigRecord):
        return {}
    return {
        str(name): number
        for name, value in values.items()
        if (number := _finite(value)) is not None
    }


def parse_evaluation(reply: Message, num_classes: int) -> tuple[int, float, np.ndarray]:
    """``(num_examples, loss, confusion)`` of an evaluate reply, the matrix as int64.

    Raises
    ------
    ValueError
        If a value is missing, of the wrong type or inconsistent: counts must be ints in
        ``[0, MAX_COUNT]``, the matrix ``num_classes²`` of them summing to the count, the loss a
        finite number >= 0 (a cross-entropy).
    """
    metrics = reply.content.get(P.METRICS)
    if not isinstance(metrics, MetricRecord):
        raise ValueError(f"record {P.METRICS!r} is missing or not a MetricRecord")
    n = _count(metrics.get(P.NUM_EXAMPLES), P.NUM_EXAMPLES)
    cells = metrics.get(P.CONFUSION)
    if not isinstance(cells, list) or len(cells) != num_classes * num_classes:
        raise ValueError(f"{P.CONFUSION!r} must be a list of {num_classes}² counts")
    counts = [_count(c, P.CONFUSION) for c in cells]
    if sum(counts) != n:
        raise ValueError(f"{P.CONFUSION!r} sums to {sum(counts)}, not {P.NUM_EXAMPLES} {n}")
    loss = _finite(metrics.get(P.EVAL_LOSS))
    if loss is None or loss < 0:
        raise ValueError(f"{P.EVAL_LOSS!r} must be a finite number >= 0")
    return n, loss, np.array(counts, dtype=np.int64).reshape(num_classes, num_classes)


def _count(value: object, name: str) -> int:
    """An example count: an int (or integral float) in ``[0, MAX_COUNT]``."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name!r} must hold counts in [0, 2**63 - 1], found {value!r}")
    return value


def rejection_scores(rejected: AbstractSet[Any], attackers: AbstractSet[Any]) -> dict[str, float]:
    """Counts, precision and recall of the ``rejected`` participants against the ``attackers``.

    Nothing rejected means no false positives: precision 1 (recall tells the misses); no
    attacker, recall 1.
    """
    caught = len(rejected & attackers)
    return {
        "rejected": float(len(rejected)),
        "attackers": float(len(attackers)),
        "caught": float(caught),
        "precision": caught / len(rejected) if rejected else 1.0,
        "recall": caught / len(attackers) if attackers else 1.0,
    }


def detection_scores(
    strategy_report: dict[str, Any],
    participants: set[int],
    federation: Federation,
) -> dict[str, float]:
    """Precision and recall of the strategy's rejections against the true attackers this round.

    Only ``participants`` count (the devices whose train reply was not an error): an attacker
    that was not sampled cannot be caught.
    Empty when the strategy reports no rejections field. When the report has per-device weights,
    ``attacker_weight`` is the attackers' summed share of the aggregate: what a defence that
    down-weights rather than rejects (label flip, sign flip) let through.
    """
    if "rejected" not in strategy_report:
        return {}
    # Keys that are no device id (a strategy's "node-<id>" for a node off the roster) name no
    # participant.
    rejected = {int(d) for d in strategy_report["rejected"] if str(d).isdigit()} & participants
    attackers = federation.attackers & participants
    scores = rejection_scores(rejected, attackers)
    devices = strategy_report.get("devices") or {}
    weights = [(devices.get(str(d)) or {}).get("weight") for d in attackers]
    if devices and all(isinstance(w, int | float) for w in weights):
        scores["attacker_weight"] = float(sum(weights))  # type: ignore[arg-type]
    return scores
