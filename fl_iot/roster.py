"""Which Flower node is which device: the roll call, and a grid that lists nodes in device order.

Flower gives simulated nodes random 64-bit ids, so "the first node" differs between runs. Before
round 1 the server asks every node for its device id (a ``query`` message); from then on nodes are
listed in device-id order, which, with a seeded sampler, makes the choice of devices per round
reproducible. Waiting for every node also avoids Flower's round-1 under-sampling race.

A reply is charged to the node its message was sent to (:func:`strategies.answered_node`), never
to the reply's own ``src_node_id``: on the Deployment Engine the SuperLink answers for a dead node
itself, with an error reply whose source is the SuperLink's node id (1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from clients.gateway import GatewayFormatError, is_packed, unpack
from fl_iot.protocol import DEVICE, DEVICE_ID, ROLL_CALL
from strategies import answered_node, sent_destinations
from strategies.validation import claimed_device

log = logging.getLogger(__name__)


class RosterError(RuntimeError):
    """Nodes did not connect or did not answer the roll call in time."""


@dataclass(frozen=True)
class Roster:
    """The mapping from Flower node id to device id."""

    node_to_device: dict[int, int]

    def device_of(self, node_id: int) -> int | None:
        """Device id of a node, or ``None`` for a node that did not answer the roll call."""
        return self.node_to_device.get(node_id)

    def sort_key(self, node_id: int) -> tuple[int, int]:
        """Order nodes by device id; unknown nodes last, by node id."""
        device = self.node_to_device.get(node_id)
        return (0, device) if device is not None else (1, node_id)

    def node_ids(self) -> list[int]:
        """Every node that answered the roll call, in device order."""
        return sorted(self.node_to_device, key=self.sort_key)

    def device_ids(self) -> list[int]:
        """Every device of the roster, in device order."""
        return sorted(self.node_to_device.values())

    def node_of(self, device_id: int) -> int:
        """The node that serves ``device_id`` (a ``KeyError`` for a device off the roster)."""
        return self._nodes_by_device[device_id]

    @cached_property
    def _nodes_by_device(self) -> dict[int, int]:
        return {device: node for node, device in self.node_to_device.items()}

    def device_keys(self) -> dict[int, str]:
        """``{node_id: str(device_id)}``: the roster as the strategies key devices."""
        return {node: str(device) for node, device in self.node_to_device.items()}


def take_roll_call(
    grid: Grid, num_devices: int, timeout_s: float, num_nodes: int | None = None
) -> dict[int, tuple[int, ...]]:
    """Wait for ``num_nodes`` nodes, ask each which devices it serves, and return the mapping.

    A node that is one device answers with its device id; a gateway (:mod:`clients.gateway`)
    answers for each of its devices. ``num_nodes`` defaults to ``num_devices`` (one node per
    device).

    Returns
    -------
    dict
        ``{node_id: (device_id, ...)}``, every device of ``0..num_devices-1`` exactly once.

    Raises
    ------
    RosterError
        If the nodes do not all connect or answer within ``timeout_s``, or their devices are not
        the ``num_devices`` of the run, each once: saying how many nodes connected and naming
        the missing devices (the connected nodes are asked either way).
    """
    num_nodes = num_devices if num_nodes is None else num_nodes
    deadline = time.monotonic() + timeout_s
    while len(node_ids := list(grid.get_node_ids())) < num_nodes:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    messages = [
        Message(content=RecordDict(), message_type=ROLL_CALL, dst_node_id=node_id)
        for node_id in node_ids
    ]
    # Nodes that did not all connect are still asked, briefly, so that the error names the
    # devices that are missing.
    replies = grid.send_and_receive(
        messages, timeout=max(ROLL_CALL_GRACE_S, deadline - time.monotonic())
    )
    sent = sent_destinations(messages)
    mapping: dict[int, tuple[int, ...]] = {}
    for reply in replies:
        node_id = answered_node(reply, sent)
        if node_id is None:
            log.warning(
                "ignoring a roll-call reply from node %s that answers none of the roll call's "
                "messages",
                reply.metadata.src_node_id,
            )
            continue
        if reply.has_error():
            log.warning("node %s failed the roll call: %s", node_id, reply.error.reason)
            continue
        devices = _devices_answered(node_id, reply.content)
        if devices:
            mapping[node_id] = devices
    listed = [d for devices in mapping.values() for d in devices]
    duplicates = len(listed) - len(set(listed))
    unknown = sorted(set(listed) - set(range(num_devices)))
    missing = sorted(set(range(num_devices)) - set(listed))
    if missing or duplicates or unknown:
        problems = [f"{len(node_ids)} of {num_nodes} nodes connected within {timeout_s:g} s"]
        problems.append(f"{len(mapping)} answered for {len(set(listed))} of {num_devices} devices")
        if missing:
            problems.append(f"missing devices: {_listing(missing)}")
        if duplicates:
            problems.append(f"{duplicates} device ids claimed twice")
        if unknown:
            problems.append(f"unknown device ids: {_listing(unknown)}")
        raise RosterError("roll call: " + "; ".join(problems))
    return mapping


ROLL_CALL_GRACE_S = 1.0
"""Least time the nodes get to answer the roll call, even after the wait for them timed out."""


def _listing(ids: list[int], shown: int = 20) -> str:
    """``ids`` as a short list: the first ``shown``, then how many more."""
    head = ", ".join(str(i) for i in ids[:shown])
    return head + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _devices_answered(node_id: int, content: RecordDict) -> tuple[int, ...]:
    """The devices a roll-call reply answers for (none, logged, when it is malformed)."""
    if not is_packed(content):
        device_id = _device_id(content)
        if device_id is None:
            log.warning("node %s answered the roll call without a device id", node_id)
            return ()
        return (device_id,)
    try:
        answers = unpack(content)
    except GatewayFormatError as error:
        log.warning(
            "node %s answered the roll call with a malformed gateway reply: %s", node_id, error
        )
        return ()
    devices: list[int] = []
    for device, answer in answers.items():
        if not isinstance(answer, RecordDict) or _device_id(answer) != device:
            log.warning(
                "gateway node %s did not answer the roll call for device %s", node_id, device
            )
            continue
        devices.append(device)
    return tuple(devices)


def _device_id(content: RecordDict) -> int | None:
    """The device id a roll-call answer names, ``None`` when it names none or a malformed one."""
    try:
        return claimed_device(content)
    except ValueError:
        return None


def device_roster(mapping: dict[int, tuple[int, ...]]) -> Roster:
    """The roster of a roll call in which every node is one device."""
    return Roster({node: devices[0] for node, devices in mapping.items()})


def roll_call_reply(message: Message, device_id: int) -> Message:
    """The ClientApp's answer to a roll call."""
    return Message(
        content=RecordDict({DEVICE: ConfigRecord({DEVICE_ID: device_id})}), reply_to=message
    )


def poll_replies(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float | None,
    interval: float = 0.1,
    wait: Callable[[float], object] = time.sleep,
) -> list[Message]:
    """Push ``messages`` through ``grid``, pull their replies until all came or ``timeout`` passed.

    Flower's ``send_and_receive`` loop over any grid's ``push_messages`` and ``pull_messages``;
    ``wait`` sleeps between pulls (an event's ``wait`` lets a stop end the sleep early).
    """
    pending = set(grid.push_messages(messages))
    end = time.monotonic() + (timeout if timeout is not None else 0.0)
    replies: list[Message] = []
    while timeout is None or time.monotonic() < end:
        pulled = list(grid.pull_messages(pending))
        replies.extend(pulled)
        pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
        if not pending:
            break
        wait(interval)
    return replies


class DelegatingGrid(Grid):
    """A grid that defers every call to another grid: the base of grids that change one call."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run: Run) -> None:  # noqa: D102
        self._grid.set_run(run)

    @property
    def run(self) -> Run:  # noqa: D102
        return self._grid.run

    def create_message(  # noqa: D102
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self._grid.pull_messages(message_ids)

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


class PollingGrid(DelegatingGrid):
    """A grid whose ``send_and_receive`` pulls replies every ``interval`` seconds.

    Flower 1.42's Deployment Engine grid (``HttpGrid``) sleeps 3 s between pulls, so every
    round's train and evaluate phases each end on average 1.5 s after their last reply came;
    pulling every 0.1 s costs the SuperLink ten small requests a second while a phase waits.
    """

    def __init__(self, grid: Grid, interval: float = 0.1) -> None:
        super().__init__(grid)
        self._interval = interval

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return poll_replies(self._grid, messages, timeout, self._interval)


class DeviceOrderedGrid(DelegatingGrid):
    """A grid that lists the roster's nodes in device order and otherwise defers to the real grid.

    It lists every node of the roster, also those Flower no longer reports: a device that stops
    answering stays in the fleet, is still sampled, and is counted as failed (the SuperLink's
    error reply for a dead node) or missing (no reply at all) instead of vanishing from the
    counts. A node that connects after the roll call is not part of the study and is not listed.
    """

    def __init__(self, grid: Grid, roster: Roster) -> None:
        super().__init__(grid)
        self._roster = roster

    def get_node_ids(self) -> Iterable[int]:
        """The roster's node ids, sorted by device id."""
        return self._roster.node_ids()
