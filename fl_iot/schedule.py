"""Who is asked to train, when updates arrive, and which ones a round uses: the simulated clock.

:class:`RoundScheduler` sits between the strategy and the grid in every training round of the
round loop. The strategy samples as it always does; the scheduler then

1. **plans** the round (:meth:`~RoundScheduler.plan`): of the strategy's sample, devices that are
   offline or still busy are not asked (``sync``) or are replaced from the available pool, which
   also tops the sample up to the over-selection (``deadline``, ``fedbuff``); each device asked
   gets the fleet's verdict (:meth:`fl_iot.fleet.FleetSimulator.dispatch`) on the measured bytes
   of its message: declined, a broken download, or offline after ``k`` of its steps, which the
   simulated device is told so that it really stops there and keeps its partial update;
2. **collects** the replies (:meth:`~RoundScheduler.collect`): each update's simulated arrival
   (download + compute + upload of the reply's measured bytes, with latencies), the round's close
   (:func:`fl_iot.rounds.close_time`), and the updates the round aggregates: the on-time ones, and
   stale ones (late updates of earlier rounds, partial updates) re-based on the current model and
   weighted by their staleness (:mod:`fl_iot.rounds`).

Replies that come back with an error are handed to the strategy as they are (it counts the
failure). Every device touched in a round gets a :class:`DeviceRound`: online or not, the
outcome, bytes each way and the simulated times.

Under ``fleet=ideal`` and ``rounds=sync`` every device is online and instant: the plan is the
strategy's sample, every update is on time, and the round is exactly the round of a loop without
a scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fl_iot import protocol as P
from fl_iot.fleet import DeviceOutcome, Dispatch, FleetSimulator
from fl_iot.message_size import wire_bytes
from fl_iot.roster import Roster
from fl_iot.rounds import (
    LateUpdates,
    PartialUpdates,
    RoundMode,
    RoundsConfig,
    close_time,
    over_selected,
    staleness_weight,
)

log = logging.getLogger(__name__)


@dataclass
class DeviceRound:
    """One device's part in one round, as the round record logs it."""

    online: bool
    outcome: str
    reason: str = ""
    bytes_down: int = 0
    bytes_up: int = 0
    sent_s: float | None = None
    download_s: float | None = None
    started_s: float | None = None  # training began (the download arrived)
    compute_s: float | None = None
    finished_s: float | None = None  # training ended, or the device went offline
    upload_s: float | None = None
    arrival_s: float | None = None
    staleness: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set."""
        return {k: v for k, v in self.__dict__.items() if v is not None and v != ""}


@dataclass
class PendingUpdate:
    """A reply the server holds: arrived (in simulated time) at ``arrival_s`` or later."""

    device: int
    node_id: int
    base_round: int
    reply: Message
    arrival_s: float


@dataclass
class HeldUpdate:
    """A :class:`PendingUpdate` as a checkpoint keeps it: by device, since node ids change."""

    device: int
    base_round: int
    content: RecordDict
    arrival_s: float


@dataclass
class SchedulerState:
    """What a scheduler carries over a resumed run (:meth:`RoundScheduler.state`).

    Everything is keyed by device: a resumed run is a new Flower run, whose nodes have new ids.
    The fleet's timelines are not kept: they are regenerated from the seed.
    """

    clock_s: float
    pending: list[HeldUpdate]
    busy_until: dict[int, float]
    models: dict[int, ArrayRecord]
    partial_rounds: dict[int, int]
    training_starts: dict[int, list[float]]


@dataclass
class Plan:
    """The messages a round sends, their fleet verdicts, and the devices not asked."""

    opened_s: float
    target: int  # updates a deadline round waits for
    to_send: list[Message]
    verdicts: dict[int, Dispatch]  # by node id, for every message in to_send
    devices: dict[int, DeviceRound]  # by device id: everyone selected, asked or not
    quiet: bool = False  # a device asked will not be heard from (the server cannot know)
    selected: int = 0  # devices selected (asked or found offline) and nodes off the roster asked


@dataclass
class Collected:
    """What a round aggregates and what happened to every device in it."""

    replies: list[Message]
    devices: dict[int, DeviceRound]
    unanswered: dict[int, str]  # node id -> tracker outcome, for devices asked but not used
    closed_s: float
    stale_used: int = 0


@dataclass
class RoundScheduler:
    """Plans and collects training rounds on the fleet's simulated clock (see the module)."""

    fleet: FleetSimulator
    config: RoundsConfig
    roster: Roster
    seed: int
    clock_s: float = 0.0
    pending: list[PendingUpdate] = field(default_factory=list)
    busy_until: dict[int, float] = field(default_factory=dict)
    models: dict[int, ArrayRecord] = field(default_factory=dict)
    partial_rounds: dict[int, int] = field(default_factory=dict)  # device -> round cut short

    @property
    def mode(self) -> RoundMode:
        """The configured round mode."""
        return RoundMode(self.config.mode)

    def available(self, t: float) -> list[int]:
        """Devices online at ``t`` and not busy with an earlier round's training."""
        return [
            d
            for d in self.roster.device_ids()
            if self.fleet.online(d, t) and self.busy_until.get(d, -1.0) <= t
        ]

    def devices_needed(self) -> int:
        """Available devices a round waits for before it opens (FedBuff: none while busy)."""
        if self.mode == RoundMode.FEDBUFF and self.pending:
            return 0
        return min(self.config.target_replies or 1, len(self.roster.device_ids()))

    def open_round(self, needed: int) -> float:
        """Advance the clock until ``needed`` devices are available (at most ``max_wait_s``)."""
        t = self.clock_s
        limit = t + self.config.max_wait_s
        while len(self.available(t)) < needed and t < limit:
            waits = [b for b in self.busy_until.values() if b > t]
            later = self.fleet.next_online(self.roster.device_ids(), t)
            candidates = [c for c in [*waits, later] if c is not None and c > t]
            if not candidates:
                break
            t = min(min(candidates), limit)
        self.clock_s = t
        return t

    def plan(self, server_round: int, messages: Sequence[Message], arrays: ArrayRecord) -> Plan:
        """Decide whom to ask this round, and what the fleet does to each (see the module)."""
        t = self.clock_s
        self.models[server_round] = arrays
        for old in [r for r in self.models if r < server_round - self.config.max_staleness]:
            del self.models[old]
        mode = self.mode
        available = self.available(t)
        free = set(available)
        sampled = [(m, self.roster.device_of(m.metadata.dst_node_id)) for m in messages]
        devices: dict[int, DeviceRound] = {}
        chosen: list[tuple[Message, int]] = []
        target = self.config.target_replies or len(messages)
        if mode == RoundMode.FEDBUFF:
            target = self.config.buffer_size or len(messages)
            busy = sum(1 for b in self.busy_until.values() if b > t)
            slots = (self.config.concurrency or len(self.roster.device_ids())) - busy
        elif mode == RoundMode.DEADLINE:
            slots = over_selected(target, self.config.over_selection)
        else:
            slots = len(messages)
        for message, device in sampled:
            if device is None:
                chosen.append((message, -1))  # off the roster: sent, the strategy judges it
            elif device in free and len(chosen) < slots:
                chosen.append((message, device))
                free.discard(device)
            elif mode == RoundMode.SYNC:
                busy = self.busy_until.get(device, -1.0) > t
                devices[device] = DeviceRound(
                    online=self.fleet.online(device, t),
                    outcome=DeviceOutcome.OFFLINE.value,
                    reason="busy with an earlier round" if busy else "offline",
                )
            elif not self.fleet.online(device, t):
                devices[device] = DeviceRound(
                    False, DeviceOutcome.OFFLINE.value, "offline: replaced"
                )
        if mode != RoundMode.SYNC and messages and len(chosen) < slots:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, server_round, 7]))
            pool = [d for d in available if d in free]
            extra = rng.permutation(len(pool))[: slots - len(chosen)]
            for i in sorted(int(i) for i in extra):
                chosen.append((_copy_to(messages[0], self.roster.node_of(pool[i])), pool[i]))
        to_send: list[Message] = []
        verdicts: dict[int, Dispatch] = {}
        sizes: dict[int, int] = {}
        quiet = False
        for message, device in chosen:
            if device < 0:
                to_send.append(message)
                continue
            if id(message.content) not in sizes:
                sizes[id(message.content)] = wire_bytes(message)
            verdict = self.fleet.dispatch(device, server_round, t, sizes[id(message.content)])
            entry = DeviceRound(
                online=verdict.outcome != DeviceOutcome.OFFLINE,
                outcome=verdict.outcome.value if verdict.outcome else DeviceOutcome.ON_TIME.value,
                reason=verdict.reason,
                bytes_down=verdict.download_bytes if verdict.trains else 0,
                sent_s=t,
                download_s=verdict.download_s,
                started_s=t + verdict.download_s if verdict.trains else None,
                compute_s=verdict.compute_s if verdict.trains else None,
                finished_s=(
                    (verdict.quiet_s or t + verdict.download_s + verdict.compute_s)
                    if verdict.trains
                    else None
                ),
            )
            devices[device] = entry
            quiet = quiet or verdict.quiet_s is not None
            if not verdict.trains:
                if verdict.quiet_s is not None:  # the download broke: gone until then
                    self.busy_until[device] = verdict.quiet_s
                continue
            directives: dict[str, int | str] = {}
            if verdict.cutoff_steps is not None:
                directives[P.CUTOFF_STEPS] = verdict.cutoff_steps
            if self.config.partial_updates == PartialUpdates.USE.value:
                directives[P.PARTIAL_UPDATES] = PartialUpdates.USE.value
            if directives:
                message = _with_config(message, directives)
            to_send.append(message)
            verdicts[message.metadata.dst_node_id] = verdict
        selected = len(devices) + sum(1 for _, device in chosen if device < 0)
        return Plan(t, target, to_send, verdicts, devices, quiet, selected)

    def collect(
        self,
        server_round: int,
        plan: Plan,
        answers: Sequence[tuple[int, Message]],
        uploaded: Mapping[int, int] | None = None,
    ) -> Collected:
        """Time the replies, close the round, and pick the updates it aggregates.

        ``uploaded`` gives a reply's bytes as it came, by node (a compressed update is decoded
        before it gets here, and its upload took the compressed bytes); without an entry, the
        reply's own.
        """
        mode = self.mode
        devices = plan.devices
        errors: list[tuple[int, Message]] = []
        answered = {node for node, _ in answers}
        quiet = plan.quiet or any(node not in answered for node in plan.verdicts)
        unanswered: dict[int, str] = {}
        for node, verdict in plan.verdicts.items():
            if node not in answered:
                devices[verdict.device].outcome = DeviceOutcome.FAILED.value
                devices[verdict.device].reason = "no reply"
                unanswered[node] = "late"  # as a synchronous strategy would infer
        for node, reply in answers:
            asked = plan.verdicts.get(node)
            if asked is None:  # a node off the roster: the strategy judges it
                errors.append((node, reply))
                continue
            verdict = asked
            own = devices[verdict.device]
            if reply.has_error():
                declined = reply.error.code == P.DECLINED_ERROR_CODE
                own.outcome = (DeviceOutcome.DECLINED if declined else DeviceOutcome.FAILED).value
                if verdict.cutoff_steps is not None:
                    own.reason = own.reason or "went offline mid-training"
                    self.partial_rounds[verdict.device] = server_round
                    self.busy_until[verdict.device] = verdict.quiet_s or plan.opened_s
                errors.append((node, reply))
                continue
            size = uploaded.get(node) if uploaded is not None else None
            arrival = self.fleet.arrive(
                verdict, server_round, size if size is not None else wire_bytes(reply)
            )
            own.bytes_up = arrival.upload_bytes
            own.upload_s = arrival.upload_s
            own.arrival_s = arrival.arrival_s
            self.busy_until[verdict.device] = arrival.arrival_s
            if arrival.outcome == DeviceOutcome.FAILED:
                own.outcome, own.reason = DeviceOutcome.FAILED.value, arrival.reason
                unanswered[node] = "failed"
                quiet = True
                continue
            base = self._base_round(verdict.device, server_round, reply)
            self.pending.append(PendingUpdate(verdict.device, node, base, reply, arrival.arrival_s))
        staleness_ok = [
            p for p in self.pending if server_round - p.base_round <= self.config.max_staleness
        ]
        if mode == RoundMode.SYNC:
            arrivals = [p.arrival_s for p in self.pending if p.base_round == server_round]
        else:
            arrivals = [p.arrival_s for p in staleness_ok]
        closed = close_time(plan.opened_s, arrivals, quiet, mode, self.config, max(plan.target, 1))
        used: list[PendingUpdate] = []
        kept: list[PendingUpdate] = []
        for p in self.pending:
            staleness = server_round - p.base_round
            entry = devices.get(p.device)
            if p.arrival_s <= closed and staleness <= self.config.max_staleness:
                used.append(p)
                if entry is None:
                    entry = devices[p.device] = DeviceRound(True, DeviceOutcome.ON_TIME.value)
                    entry.arrival_s = p.arrival_s
                if staleness:
                    entry.staleness = staleness
                continue
            if staleness > self.config.max_staleness:
                if entry is not None:
                    entry.outcome, entry.reason = DeviceOutcome.LATE.value, "too stale: dropped"
                continue
            # Arrives after the close: late; in FedBuff simply in flight, for a later buffer.
            if p.base_round == server_round and entry is not None:
                entry.outcome = DeviceOutcome.LATE.value
                if mode != RoundMode.FEDBUFF:
                    unanswered[p.node_id] = "late"
            keep = mode == RoundMode.FEDBUFF or (
                mode == RoundMode.DEADLINE and self.config.late_updates == LateUpdates.STALE.value
            )
            if keep:
                kept.append(p)
                if entry is not None and p.base_round == server_round:
                    entry.reason = "arrives after the close: kept for a later round"
            elif entry is not None:
                entry.reason = "arrived after the close: dropped"
        self.pending = kept
        current = self.models[server_round]
        chosen = errors + [(p.node_id, self._rebased(p, server_round, current)) for p in used]
        chosen.sort(key=lambda pair: self.roster.sort_key(pair[0]))
        self.clock_s = max(self.clock_s, closed)
        for device, entry in devices.items():
            if entry.outcome == DeviceOutcome.OFFLINE.value and (
                node := self.roster.node_of(device)
            ):
                unanswered.setdefault(node, "offline")
        return Collected(
            replies=[reply for _, reply in chosen],
            devices=devices,
            unanswered=unanswered,
            closed_s=closed,
            stale_used=sum(1 for p in used if p.base_round != server_round),
        )

    def state(self) -> SchedulerState:
        """The scheduler's state between two rounds, for a checkpoint."""
        return SchedulerState(
            clock_s=self.clock_s,
            pending=[
                HeldUpdate(p.device, p.base_round, p.reply.content, p.arrival_s)
                for p in self.pending
            ],
            busy_until=dict(self.busy_until),
            models=dict(self.models),
            partial_rounds=dict(self.partial_rounds),
            training_starts={d: list(s) for d, s in self.fleet.training_starts.items()},
        )

    def restore(self, state: SchedulerState) -> None:
        """Continue from ``state`` on this scheduler's roster (the nodes of the resumed run).

        A held update becomes a reply from the device's new node, to no message of this run:
        strategies charge such a reply to its source node, as they do a stale reply.
        """
        self.clock_s = state.clock_s
        self.pending = []
        for held in state.pending:
            node = self.roster.node_of(held.device)
            ask = Message(
                RecordDict(), dst_node_id=node, message_type="train", group_id=str(held.base_round)
            )
            reply = Message(held.content, reply_to=ask)
            self.pending.append(
                PendingUpdate(held.device, node, held.base_round, reply, held.arrival_s)
            )
        self.busy_until = dict(state.busy_until)
        self.models = dict(state.models)
        self.partial_rounds = dict(state.partial_rounds)
        self.fleet.training_starts = {d: list(s) for d, s in state.training_starts.items()}

    # -- helpers -----------------------------------------------------------------------------

    def _base_round(self, device: int, server_round: int, reply: Message) -> int:
        """The round whose model the update was trained on (a partial update's is earlier)."""
        update = reply.content.get(P.UPDATE)
        claimed = update.get(P.BASE_ROUND) if isinstance(update, ConfigRecord) else None
        recorded = self.partial_rounds.pop(device, None)
        if claimed is None or isinstance(claimed, bool) or not isinstance(claimed, int):
            return server_round
        if recorded is None or claimed != recorded:
            log.warning(
                "round %d: device %s offers a partial update of round %s, but none was cut "
                "short then (recorded: %s); it counts as trained on this round's model",
                server_round,
                device,
                claimed,
                recorded,
            )
            return server_round
        return claimed

    def _rebased(self, pending: PendingUpdate, server_round: int, current: ArrayRecord) -> Message:
        """``pending``'s reply, re-based on ``current`` and weighted by its staleness."""
        staleness = server_round - pending.base_round
        reply = pending.reply
        if staleness == 0:
            return reply
        base = self.models.get(pending.base_round)
        arrays = reply.content.get(P.ARRAYS)
        if base is None or not isinstance(arrays, ArrayRecord):
            return reply  # the strategy screens it like any reply
        try:
            rebased = {
                key: Array(_rebase(current[key].numpy(), arrays[key].numpy(), base[key].numpy()))
                for key in current
            }
        except (KeyError, ValueError, TypeError) as error:
            log.warning(
                "round %d: the stale update of device %s does not fit the model (%s); "
                "handed over as it is",
                server_round,
                pending.device,
                error,
            )
            return reply
        reply.content[P.ARRAYS] = ArrayRecord(rebased)
        metrics = reply.content.get(P.METRICS)
        if isinstance(metrics, MetricRecord):
            n = metrics.get(P.NUM_EXAMPLES)
            if isinstance(n, int | float) and not isinstance(n, bool):
                weight = staleness_weight(staleness, self.config.staleness_exponent)
                metrics[P.NUM_EXAMPLES] = max(1, round(float(n) * weight))
        return reply


def _rebase(current: np.ndarray, update: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``current + (update - base)`` in ``current``'s dtype and shape (0-d arrays stay arrays)."""
    if update.shape != current.shape or base.shape != current.shape:
        raise ValueError(f"shape {update.shape} does not match the model's {current.shape}")
    return np.asarray(current + (update - base)).astype(current.dtype).reshape(current.shape)


def _copy_to(message: Message, node_id: int) -> Message:
    """A message with ``message``'s content and type, to another node."""
    return Message(
        content=message.content, message_type=message.metadata.message_type, dst_node_id=node_id
    )


def _with_config(message: Message, values: Mapping[str, int | str]) -> Message:
    """A copy of ``message`` whose config record also holds ``values`` (the rest is shared)."""
    content = RecordDict({key: record for key, record in message.content.items()})
    config = message.content.get(P.CONFIG)
    merged = ConfigRecord(dict(config.items()) if isinstance(config, ConfigRecord) else {})
    for key, value in values.items():
        merged[key] = value
    content[P.CONFIG] = merged
    return Message(
        content=content,
        message_type=message.metadata.message_type,
        dst_node_id=message.metadata.dst_node_id,
    )
