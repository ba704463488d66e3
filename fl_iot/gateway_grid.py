"""The server's view of a fleet behind gateways: one address per device, whatever node serves it.

:class:`GatewayGrid` sits between the round loop and Flower's grid. Above it every device has a
node id of its own (:func:`device_node_id`), so the strategies sample devices, not nodes, and the
round loop, the scheduler, the roster and every strategy (``trusted`` included) see one message
and one reply per device, exactly as when each device runs on its own node. Below it, the
messages a push addresses to the devices of one gateway travel as one message
(:func:`clients.gateway.pack_contents`, the round's model stored once) and the gateway's reply is
unpacked into one reply per device. A device whose handling failed inside its gateway gets its own
error reply; a gateway that failed as a whole (a dead node, a malformed reply) gives each of its
asked devices an error reply, so none of them is silently missing.

An aggregating gateway's reply (:func:`clients.gateway.aggregated`) unpacks the same way, each
device's reply holding its own metrics; the gateway's one update and its total weight are added
to the replies of the devices it averages, as the same records (no copy), where
:class:`fl_iot.gateway_aggregation.GatewayAggregation` finds them. Each of those devices is
charged an equal share of the average's bytes as its update, on top of its own metrics, so that
the devices' bytes add up to what the gateway sent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from uuid import uuid4

from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from clients.gateway import (
    AGGREGATE,
    AGGREGATE_METRICS,
    EDGE,
    GatewayFormatError,
    aggregated,
    pack_contents,
    unpack,
)
from fl_iot.message_size import charge_share, payload_bytes, reply_bytes
from fl_iot.protocol import ARRAYS, GATEWAY_ERROR_CODE
from fl_iot.roster import DelegatingGrid, Roster, poll_replies

log = logging.getLogger(__name__)

DEVICE_NODE_BASE = 1_000_000_000
"""Device ``d`` is addressed as node ``DEVICE_NODE_BASE + d`` above a :class:`GatewayGrid`
(readable in logs, and apart from Flower's own ids 0 and 1)."""


def device_node_id(device_id: int) -> int:
    """The node id a device is addressed by above a :class:`GatewayGrid`."""
    return DEVICE_NODE_BASE + int(device_id)


def gateway_roster(gateways: Mapping[int, tuple[int, ...]]) -> Roster:
    """The roster of the devices behind ``gateways`` (``{gateway node: devices}``)."""
    return Roster({device_node_id(d): d for devices in gateways.values() for d in devices})


class GatewayGrid(DelegatingGrid):
    """A grid that addresses each device behind a gateway as a node of its own.

    Parameters
    ----------
    grid : Grid
        Flower's grid, whose nodes are the gateways.
    gateways : mapping
        ``{gateway node id: device ids it serves}``, from the roll call.
    """

    def __init__(self, grid: Grid, gateways: Mapping[int, tuple[int, ...]]) -> None:
        super().__init__(grid)
        self._gateway_of = {
            device_node_id(d): node for node, devices in gateways.items() for d in devices
        }
        self._in_flight: dict[str, list[Message]] = {}  # gateway message id -> device messages
        self._ready: dict[str, Message] = {}  # device message id -> its unpacked reply

    def get_node_ids(self) -> Iterable[int]:
        """Every device's node id, in device order."""
        return sorted(self._gateway_of)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Send each gateway one message for the devices it serves; return per-device ids.

        The device messages get ids of their own, as Flower's grid gives its messages, so
        their replies answer them (``reply_to_message_id``).
        """
        by_gateway: dict[tuple[int, str], list[Message]] = {}
        ids: list[str] = []
        for message in messages:
            gateway = self._gateway_of.get(message.metadata.dst_node_id)
            if gateway is None:
                log.warning(
                    "not sending a message to node %s: it is no device behind a gateway",
                    message.metadata.dst_node_id,
                )
                continue
            # What Flower's own grids do: the id is set when the message is pushed.
            message.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(message.metadata.message_id)
            key = (gateway, message.metadata.message_type)
            by_gateway.setdefault(key, []).append(message)
        for (gateway, message_type), members in by_gateway.items():
            content = pack_contents(
                {m.metadata.dst_node_id - DEVICE_NODE_BASE: m.content for m in members}
            )
            packed = Message(
                content,
                dst_node_id=gateway,
                message_type=message_type,
                group_id=members[0].metadata.group_id,
                ttl=min(m.metadata.ttl for m in members),
            )
            for gateway_id in self._grid.push_messages([packed]):
                self._in_flight[gateway_id] = members
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The device replies to ``message_ids`` that have come in."""
        wanted = set(message_ids)
        gateway_ids = [
            gid
            for gid, members in self._in_flight.items()
            if any(m.metadata.message_id in wanted for m in members)
        ]
        if gateway_ids:
            for reply in self._grid.pull_messages(gateway_ids):
                members = self._in_flight.pop(reply.metadata.reply_to_message_id, None)
                if members is None:
                    log.warning(
                        "ignoring a reply from node %s that answers no gateway message in flight",
                        reply.metadata.src_node_id,
                    )
                    continue
                update = _aggregate_of(reply)
                device_replies = _unpacked(reply, members)
                averaged = [r for r in device_replies if update is not None and _averaged(r)]
                for device_reply in device_replies:
                    # Measured now, while later gateways are still training: the round loop
                    # reads the same figures after the last reply is in.
                    reply_bytes(device_reply)
                    self._ready[device_reply.metadata.reply_to_message_id] = device_reply
                if update is not None and averaged:
                    # Each device in the average pays an equal share of it, as its update.
                    shipped = RecordDict({AGGREGATE: update[0], AGGREGATE_METRICS: update[1]})
                    total = payload_bytes(shipped, [AGGREGATE, AGGREGATE_METRICS])
                    share = round(total / len(averaged))
                    for device_reply in averaged:
                        charge_share(device_reply, ARRAYS, share)
                        device_reply.content[AGGREGATE] = update[0]
                        device_reply.content[AGGREGATE_METRICS] = update[1]
        return [self._ready.pop(i) for i in wanted if i in self._ready]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages`` and pull their replies until all came or ``timeout`` passed.

        What is still in flight for these messages afterwards is forgotten: a gateway that never
        answers must not keep its round's messages (and their model) alive.
        """
        messages = list(messages)
        interval = float(getattr(self._grid, "pull_interval", 0.1))
        replies = poll_replies(self, messages, timeout, interval)
        done = {m.metadata.message_id for m in messages}
        for gateway_id in [
            gid
            for gid, members in self._in_flight.items()
            if all(m.metadata.message_id in done for m in members)
        ]:
            del self._in_flight[gateway_id]
        for message_id in done:
            self._ready.pop(message_id, None)
        return replies


def _aggregate_of(reply: Message) -> tuple[ArrayRecord, MetricRecord] | None:
    """An aggregating gateway's update and metrics; ``None`` for a relay or malformed reply."""
    if reply.has_error():
        return None
    try:
        return aggregated(reply.content)
    except GatewayFormatError as error:
        log.warning(
            "ignoring the aggregate of gateway node %s: %s", reply.metadata.src_node_id, error
        )
        return None


def _averaged(device_reply: Message) -> bool:
    """Whether a device's part of an aggregating gateway's reply is in its average."""
    return device_reply.has_content() and EDGE not in device_reply.content


def _unpacked(reply: Message, members: list[Message]) -> list[Message]:
    """One reply per device message of a gateway's reply (errors for those it lacks)."""
    if reply.has_error():
        return [Message(reply.error, reply_to=m) for m in members]
    try:
        answers = unpack(reply.content)
    except GatewayFormatError as error:
        log.warning(
            "the reply of gateway node %s is malformed (%s): its %d devices count as failed",
            reply.metadata.src_node_id,
            error,
            len(members),
        )
        answers = {}
    asked = {m.metadata.dst_node_id - DEVICE_NODE_BASE: m for m in members}
    extra = sorted(set(answers) - set(asked))
    if extra:
        log.warning(
            "gateway node %s answered for devices it was not asked for: %s (ignored)",
            reply.metadata.src_node_id,
            extra[:10],
        )
    replies: list[Message] = []
    for device, message in asked.items():
        answer = answers.get(device)
        if answer is None:
            answer = Error(
                code=GATEWAY_ERROR_CODE,
                reason=f"the gateway's reply carries no answer for device {device}",
            )
        if isinstance(answer, RecordDict):
            replies.append(Message(answer, reply_to=message))
        else:
            replies.append(Message(answer, reply_to=message))
    return replies
