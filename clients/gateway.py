"""Edge gateways: one Flower node that serves many devices, each answering as itself.

A gateway node holds many devices (a hospital hub and its patients' wearables, a depot server and
its vehicles). Flower sees one node; the server still addresses, and judges, each device. This
module is the wire format between the two and the client mod that serves it; it stands on Flower
alone, so a plain Flower app gets gateways by adding :func:`gateway_mod` to its ClientApp and
addressing its devices with :func:`pack_contents` (fl-iot's server does it in
:class:`fl_iot.gateway_grid.GatewayGrid`).

One message to a gateway carries the contents of the messages for several of its devices:

``gateway.index`` (a ``ConfigRecord``)
    ``devices``: the device ids addressed, in order; and per device ``"<id>"``: a flat list of
    ``record name, stored key`` pairs naming where that device's records are. Records shared
    between devices (the global model every device of a round receives) are stored once.
``r<n>``
    The stored records.

A reply has the same shape, plus ``gateway.errors`` (a ``ConfigRecord``: ``"<id>.code"``,
``"<id>.reason"``) for the devices whose own handling failed: a device that raises is reported
for that device alone and does not fail its gateway's reply. A message without an index
addresses every device of the gateway (a roll call).

Each device keeps its own ``context.state``: the gateway stores device ``d``'s entries in the
node's state under ``"<d>/<key>"``, hands the device a state of its own keys only and puts back
what the device left. Per-device state is therefore carried by the node like any state (pickled
to the simulation's actor and back with every message): keep it small.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode

INDEX = "gateway.index"
ERRORS = "gateway.errors"
DEVICES = "devices"
_RESERVED = (INDEX, ERRORS)

Record = ArrayRecord | ConfigRecord | MetricRecord
DeviceReply = RecordDict | Error
"""A device's answer inside a gateway reply: its reply content, or the error its handling gave."""


class GatewayFormatError(ValueError):
    """A gateway message or reply does not follow the wire format (a bug, or a hostile node)."""


def pack_contents(contents: Mapping[int, RecordDict]) -> RecordDict:
    """One message content that carries each device's own content, shared records once.

    Records are shared by identity: the same record object in two devices' contents is stored
    once (the global model of a round), equal but distinct objects twice.
    """
    packed = RecordDict()
    index = ConfigRecord({DEVICES: [int(d) for d in contents]})
    stored: dict[int, str] = {}
    for device, content in contents.items():
        names: list[str] = []
        for name, record in content.items():
            key = stored.get(id(record))
            if key is None:
                key = stored[id(record)] = f"r{len(stored)}"
                packed[key] = record
            names += [name, key]
        index[str(int(device))] = names
    packed[INDEX] = index
    return packed


def pack_replies(replies: Mapping[int, DeviceReply]) -> RecordDict:
    """A gateway's reply: each device's reply content, or its error."""
    contents = {d: r for d, r in replies.items() if isinstance(r, RecordDict)}
    packed = pack_contents(contents)
    failed = {d: r for d, r in replies.items() if not isinstance(r, RecordDict)}
    index = packed[INDEX]
    assert isinstance(index, ConfigRecord)
    index[DEVICES] = [int(d) for d in replies]
    if failed:
        errors = ConfigRecord()
        for device, error in failed.items():
            errors[f"{device}.code"] = int(error.code)
            errors[f"{device}.reason"] = str(error.reason or "")
        packed[ERRORS] = errors
    return packed


def is_packed(content: RecordDict) -> bool:
    """Whether ``content`` is in the gateway format (has an index)."""
    return INDEX in content


def unpack(content: RecordDict) -> dict[int, DeviceReply]:
    """Each addressed device's content (or, in a reply, its error), in the index's order.

    Raises
    ------
    GatewayFormatError
        For a missing or malformed index, a device listed twice, a reference to a record that
        is not there, or a device with neither content nor error.
    """
    index = content.get(INDEX)
    if not isinstance(index, ConfigRecord):
        raise GatewayFormatError(f"no {INDEX!r} ConfigRecord")
    devices = index.get(DEVICES)
    if not isinstance(devices, list) or not all(_is_int(d) for d in devices):
        raise GatewayFormatError(f"{INDEX}.{DEVICES} must be a list of device ids")
    device_ids = [int(d) for d in devices]
    if len(set(device_ids)) != len(device_ids):
        raise GatewayFormatError(f"{INDEX}.{DEVICES} lists a device twice")
    errors = content.get(ERRORS, ConfigRecord())
    if not isinstance(errors, ConfigRecord):
        raise GatewayFormatError(f"{ERRORS!r} is not a ConfigRecord")
    out: dict[int, DeviceReply] = {}
    for device in device_ids:
        names = index.get(str(device))
        if f"{device}.code" in errors:
            code, reason = errors[f"{device}.code"], errors.get(f"{device}.reason", "")
            if not _is_int(code) or not isinstance(reason, str):
                raise GatewayFormatError(f"device {device}: malformed error entry")
            out[device] = Error(code=int(code), reason=reason)  # type: ignore[arg-type]
            continue
        if (
            not isinstance(names, list)
            or len(names) % 2
            or not all(isinstance(n, str) for n in names)
        ):
            raise GatewayFormatError(f"device {device}: no content and no error")
        device_content = RecordDict()
        for name, key in zip(names[::2], names[1::2], strict=True):
            assert isinstance(name, str) and isinstance(key, str)
            if key in _RESERVED or key not in content or name in device_content:
                raise GatewayFormatError(f"device {device}: bad record reference {key!r}")
            device_content[name] = content[key]
        out[device] = device_content
    return out


def gateway_mod(
    devices_of: Callable[[Context], Sequence[int] | None],
    device_key: str = "device-id",
) -> Mod:
    """A client mod that makes a node a gateway serving the devices ``devices_of`` names.

    For a node where ``devices_of(context)`` is ``None`` the mod does nothing: the node is one
    device, as without it. On a gateway each addressed device gets a message with its own
    content and a context whose ``node_config[device_key]`` is its id and whose state is its
    own; the mods after this one and the handler run once per device. Outermost, so that every
    other mod is per device.

    Parameters
    ----------
    devices_of : callable
        The ids of the devices the node serves, or ``None`` for a node that is one device.
    device_key : str
        The ``node_config`` key under which a device's handler finds its id.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        served = devices_of(context)
        if served is None:
            return call_next(msg, context)
        if is_packed(msg.content):
            addressed = unpack(msg.content)
            unknown = sorted(set(addressed) - {int(d) for d in served})
            if unknown:
                raise GatewayFormatError(
                    f"devices {unknown[:10]} are not served by this gateway (it serves "
                    f"{len(served)} devices)"
                )
        else:
            addressed = dict.fromkeys((int(d) for d in served), msg.content)
        replies: dict[int, DeviceReply] = {}
        for device, content in addressed.items():
            if not isinstance(content, RecordDict):
                raise GatewayFormatError(f"the message for device {device} is an error")
            replies[device] = _serve(msg, content, context, device, device_key, call_next)
        return Message(pack_replies(replies), reply_to=msg)

    return mod


def _serve(
    msg: Message,
    content: RecordDict,
    context: Context,
    device: int,
    device_key: str,
    call_next: ClientAppCallable,
) -> DeviceReply:
    """One device's handling of its part of a gateway message: its reply content or error."""
    metadata = msg.metadata
    device_msg = make_message(
        Metadata(
            run_id=metadata.run_id,
            message_id=f"{metadata.message_id}/{device}",
            src_node_id=metadata.src_node_id,
            dst_node_id=metadata.dst_node_id,
            reply_to_message_id=metadata.reply_to_message_id,
            group_id=metadata.group_id,
            created_at=metadata.created_at,
            ttl=metadata.ttl,
            message_type=metadata.message_type,
            src_task_id=metadata.src_task_id,
            dst_task_id=metadata.dst_task_id,
        ),
        content=content,
    )
    prefix = f"{device}/"
    state = RecordDict(
        {k[len(prefix) :]: v for k, v in context.state.items() if k.startswith(prefix)}
    )
    device_context = Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config={**context.node_config, device_key: device},
        state=state,
        run_config=context.run_config,
    )
    try:
        reply = call_next(device_msg, device_context)
    except Exception as error:  # one device's failure must not fail its gateway's reply
        return Error(
            code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
            reason=f"{type(error).__name__}: {error}\n{traceback.format_exc()}",
        )
    finally:
        for key in [k for k in context.state if k.startswith(prefix)]:
            del context.state[key]
        for key, record in device_context.state.items():
            context.state[prefix + key] = record
    return reply.error if reply.has_error() else reply.content


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
