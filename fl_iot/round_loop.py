"""The synchronous round loop: configure, send, aggregate, evaluate, report.

This is the one place that drives rounds (later: deadlines, late updates, buffered aggregation).
It calls the strategy's ``configure_*`` and ``aggregate_*`` like Flower's ``Strategy.start`` does,
and adds what fl-iot needs around them:

- replies are put in device order before aggregation, so float sums are reproducible;
- node sampling is seeded per round (Flower's strategies sample with the global ``random``);
- a strategy that raises on a bad round does not end the run: the round keeps the previous model
  and the error is recorded;
- every round produces a :class:`RoundRecord` for the sinks, with per-device detail.
"""

from __future__ import annotations

import gc
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fl_iot import protocol as P
from fl_iot.federation import Federation
from fl_iot.metrics import scores
from fl_iot.privacy.reporting import privacy_summary
from fl_iot.roster import DeviceOrderedGrid, Roster

log = logging.getLogger(__name__)

CentralEvaluation = Callable[[int, ArrayRecord], dict[str, float]]


@dataclass
class RoundRecord:
    """Everything that happened in one round, as the sinks receive it."""

    round: int
    num_rounds: int
    elapsed_s: float
    round_time_s: float
    central: dict[str, float] = field(default_factory=dict)
    federated: dict[str, float] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)
    sampled: int = 0
    replied: int = 0
    failed: int = 0
    declined: int = 0
    missing: int = 0
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_class: dict[str, dict[str, float]] = field(default_factory=dict)
    strategy: dict[str, Any] = field(default_factory=dict)
    detection: dict[str, float] = field(default_factory=dict)
    privacy: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {k: v for k, v in self.__dict__.items()}


class RoundSink:
    """Receives each round's record (the tracking sinks implement this)."""

    def log_round(self, record: RoundRecord) -> None:
        """Called once per completed round."""


@dataclass
class RoundLoop:
    """Runs ``num_rounds`` synchronous rounds of a strategy over a grid."""

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

    def run(self, arrays: ArrayRecord) -> tuple[ArrayRecord, dict[str, float]]:
        """Run all rounds from ``arrays``; return the final model and the initial central scores."""
        grid = DeviceOrderedGrid(self.grid, self.roster)
        initial = self.central_evaluation(0, arrays) if self.central_evaluation else {}
        started = time.perf_counter()
        for server_round in range(1, self.num_rounds + 1):
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
        return arrays, initial

    def _seed_sampling(self, server_round: int, phase: int) -> None:
        # Flower's sample_nodes() draws from the global `random`; the grid lists nodes in
        # device order, so seeding here fixes which devices each round samples.
        random.seed(
            int(np.random.SeedSequence([self.seed, server_round, phase]).generate_state(1)[0])
        )

    def _train(
        self, grid: Grid, server_round: int, arrays: ArrayRecord, record: RoundRecord
    ) -> ArrayRecord:
        self._seed_sampling(server_round, 0)
        messages = list(
            self.strategy.configure_train(server_round, arrays, self.train_config.copy(), grid)
        )
        replies = self._send(grid, messages)
        record.sampled = len(messages)
        record.replied = sum(1 for r in replies if not r.has_error())
        record.declined = sum(
            1 for r in replies if r.has_error() and r.error.code == P.DECLINED_ERROR_CODE
        )
        record.failed = sum(1 for r in replies if r.has_error()) - record.declined
        record.missing = len(messages) - len(replies)
        self._record_train_replies(replies, record)
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
                record.strategy = dict(report(server_round))
            except Exception as error:
                record.errors.append(f"round_report: {type(error).__name__}: {error}")
        record.detection = detection_scores(record.strategy, replies, self.federation, self.roster)
        central = record.strategy.get("central_dp")
        if central:
            record.privacy["central-epsilon"] = central["epsilon"]
            record.privacy["central-epsilon-if-poisson"] = central["epsilon_if_poisson_sampling"]
            record.privacy["central-delta"] = central["delta"]
        if new_arrays is None:
            return arrays
        return new_arrays

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
        replies = self._send(grid, messages)
        confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        per_class: dict[str, np.ndarray] = {}
        loss_sum, examples = 0.0, 0
        for reply in replies:
            parsed = _evaluate_reply(reply, self.num_classes)
            if parsed is None:
                continue
            device_id, device_class, n, loss, matrix = parsed
            confusion += matrix
            per_class.setdefault(device_class, np.zeros_like(confusion))
            per_class[device_class] += matrix
            loss_sum += loss * n
            examples += n
            record.devices.setdefault(str(device_id), {})["eval_loss"] = loss
        if examples:
            record.federated = {
                **scores(confusion),
                "loss": loss_sum / examples,
                "num_examples": examples,
            }
        for device_class, matrix in per_class.items():
            record.by_class.setdefault(device_class, {}).update(
                {f"federated_{k}": v for k, v in scores(matrix).items()}
            )
        try:
            with forced_gc_suppressed():
                self.strategy.aggregate_evaluate(server_round, replies)
        except Exception as error:
            record.errors.append(f"aggregate_evaluate: {type(error).__name__}: {error}")

    def _send(self, grid: Grid, messages: list[Message]) -> list[Message]:
        if not messages:
            return []
        replies = list(grid.send_and_receive(messages, timeout=self.round_timeout_s))
        return sorted(replies, key=lambda r: self.roster.sort_key(r.metadata.src_node_id))

    def _record_train_replies(self, replies: Iterable[Message], record: RoundRecord) -> None:
        losses: list[tuple[float, float]] = []
        entries: list[dict[str, Any]] = []
        for reply in replies:
            device_id = self.roster.device_of(reply.metadata.src_node_id)
            key = str(device_id if device_id is not None else f"node-{reply.metadata.src_node_id}")
            entry = record.devices.setdefault(key, {})
            if device_id is not None:
                entry["device_class"] = self.federation[device_id].device_class
                entry["attacker"] = self.federation[device_id].attacker
            if reply.has_error():
                entry["error"] = reply.error.reason
                continue
            entry.update(_numbers(reply, P.METRICS))
            entry.update(_numbers(reply, P.TRAINER))
            entries.append(entry)
            n, loss = entry.get(P.NUM_EXAMPLES), entry.get(P.TRAIN_LOSS)
            if n is not None and loss is not None and n > 0:
                losses.append((n, loss))
        if losses:
            weights = np.array([n for n, _ in losses])
            record.train = {
                "loss": float(np.average([loss for _, loss in losses], weights=weights)),
                "num_examples": float(weights.sum()),
            }
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


def _numbers(reply: Message, record_name: str) -> dict[str, float]:
    """The finite numeric entries of one of a reply's records (absent or malformed: none)."""
    try:
        values = reply.content[record_name]
    except KeyError:
        return {}
    return {
        str(name): float(value)
        for name, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
    }


def _evaluate_reply(
    reply: Message, num_classes: int
) -> tuple[int, str, int, float, np.ndarray] | None:
    """Parse an evaluate reply; ``None`` for errors or malformed content (logged)."""
    if reply.has_error():
        return None
    try:
        metrics = reply.content[P.METRICS]
        device = reply.content[P.DEVICE]
        matrix = np.asarray(metrics[P.CONFUSION], dtype=np.int64).reshape(num_classes, num_classes)
        n = int(metrics[P.NUM_EXAMPLES])  # type: ignore[arg-type]
        loss = float(metrics[P.EVAL_LOSS])  # type: ignore[arg-type]
        if n < 0 or (matrix < 0).any() or matrix.sum() != n or not np.isfinite(loss):
            raise ValueError("inconsistent counts or loss")
        return int(device[P.DEVICE_ID]), str(device[P.DEVICE_CLASS]), n, loss, matrix  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as error:
        log.warning(
            "ignoring malformed evaluate reply from node %s: %s", reply.metadata.src_node_id, error
        )
        return None


def detection_scores(
    strategy_report: dict[str, Any],
    replies: Sequence[Message],
    federation: Federation,
    roster: Roster,
) -> dict[str, float]:
    """Precision and recall of the strategy's rejections against the true attackers this round.

    Only devices that replied count: an attacker that was not sampled cannot be caught.
    Empty when the strategy reports no rejections field. When the report has per-device weights,
    ``attacker_weight`` is the attackers' summed share of the aggregate: what a defence that
    down-weights rather than rejects (label flip, sign flip) let through.
    """
    if "rejected" not in strategy_report:
        return {}
    participants = {
        d
        for r in replies
        if not r.has_error() and (d := roster.device_of(r.metadata.src_node_id)) is not None
    }
    rejected = {int(d) for d in strategy_report["rejected"]} & participants
    attackers = federation.attackers & participants
    caught = len(rejected & attackers)
    scores = {
        "rejected": float(len(rejected)),
        "attackers": float(len(attackers)),
        "caught": float(caught),
        # Nothing rejected means no false positives: precision 1 (recall tells the misses).
        "precision": caught / len(rejected) if rejected else 1.0,
        "recall": caught / len(attackers) if attackers else 1.0,
    }
    devices = strategy_report.get("devices") or {}
    weights = [(devices.get(str(d)) or {}).get("weight") for d in attackers]
    if devices and all(isinstance(w, int | float) for w in weights):
        scores["attacker_weight"] = float(sum(weights))  # type: ignore[arg-type]
    return scores
