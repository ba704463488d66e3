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

An *aggregating* gateway (``gateway_mod(..., aggregation_of=...)``, see :class:`Aggregation`)
answers a train message with one update instead of one per device: ``gateway.aggregate`` (an
``ArrayRecord``) is the average of its trained devices' models weighted by their example counts
(hierarchical FedAvg), and ``gateway.aggregate-metrics`` (a ``MetricRecord``) holds the total
count (the aggregate's weight) and the number of devices in it. Each device's own content stays
in the reply, its ``ArrayRecord`` removed, so the server still learns every device's metrics
and failure. A device whose model is not the sent model's layout, or not finite, is left out of
the average (a ``gateway.edge`` record says why), so that it cannot break or poison its
gateway's update.

Each device keeps its own ``context.state``: the gateway stores device ``d``'s entries in the
node's state under ``"<d>/<key>"``, hands the device a state of its own keys only and puts back
what the device left. Per-device state is therefore carried by the node like any state (pickled
to the simulation's actor and back with every message): keep it small.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode

INDEX = "gateway.index"
ERRORS = "gateway.errors"
AGGREGATE = "gateway.aggregate"
AGGREGATE_METRICS = "gateway.aggregate-metrics"
DEVICES = "devices"
AGGREGATED_DEVICES = "devices"
"""``gateway.aggregate-metrics`` key: how many devices the aggregate averages."""
_RESERVED = (INDEX, ERRORS, AGGREGATE, AGGREGATE_METRICS)

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


def average_updates(
    contents: Sequence[RecordDict], weight_key: str = "num-examples"
) -> tuple[ArrayRecord, float] | None:
    """The example-weighted average of the models in ``contents``, and the total weight.

    Each content's single ``ArrayRecord`` is weighted by its ``MetricRecord``'s ``weight_key``;
    contents without exactly one ``ArrayRecord``, or without a positive finite weight, are left
    out. Floating arrays are averaged in float64 and cast back; integer arrays (BatchNorm's
    ``num_batches_tracked``) get the weighted average rounded to the nearest integer, the value
    a server's FedAvg over the same devices rounds to. ``None`` when nothing is left to average.
    """
    weighted = [m for m in (_model_and_weight(c, weight_key) for c in contents) if m]
    if not weighted:
        return None
    values = [({k: a.numpy() for k, a in model.items()}, weight) for model, weight in weighted]
    return _weighted_mean(values), sum(w for _, w in weighted)


def _weighted_mean(weighted: Sequence[tuple[Mapping[str, np.ndarray], float]]) -> ArrayRecord:
    """The weighted mean of same-layout arrays (see :func:`average_updates`), in float64."""
    total = sum(w for _, w in weighted)
    first = weighted[0][0]
    averaged = ArrayRecord()
    for key, reference in first.items():
        acc = np.zeros(reference.shape, dtype=np.float64)
        for arrays, weight in weighted:
            acc += (weight / total) * arrays[key].astype(np.float64)
        if np.issubdtype(reference.dtype, np.integer):
            acc = np.rint(acc)
        averaged[key] = Array(np.asarray(acc, dtype=reference.dtype))
    return averaged


def _model_and_weight(content: RecordDict, weight_key: str) -> tuple[ArrayRecord, float] | None:
    """A device reply's single model and positive finite weight; ``None`` when it lacks one."""
    arrays = [r for r in content.values() if isinstance(r, ArrayRecord)]
    weights = [
        r[weight_key] for r in content.values() if isinstance(r, MetricRecord) and weight_key in r
    ]
    if len(arrays) != 1 or len(weights) != 1:
        return None
    weight = weights[0]
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        return None
    if not (math.isfinite(weight) and weight > 0):
        return None
    return arrays[0], float(weight)


def _checked(model: ArrayRecord, sent: ArrayRecord) -> dict[str, np.ndarray] | str:
    """``model``'s arrays if they can be averaged with models trained from ``sent``; else why."""
    if list(model) != list(sent):
        return "its arrays are not the model's"
    values: dict[str, np.ndarray] = {}
    for key in sent:
        got, expected = model[key], sent[key]
        if got.dtype != expected.dtype or list(got.shape) != list(expected.shape):
            layout, wanted = (
                f"{got.dtype}{list(got.shape)}",
                f"{expected.dtype}{list(expected.shape)}",
            )
            return f"array {key!r} is {layout}, not {wanted}"
        values[key] = got.numpy()
        if np.issubdtype(values[key].dtype, np.floating) and not np.isfinite(values[key]).all():
            return f"array {key!r} has non-finite values"
    return values


def aggregated(content: RecordDict) -> tuple[ArrayRecord, MetricRecord] | None:
    """An aggregating gateway's update and its metrics, or ``None`` when the reply has none.

    Raises
    ------
    GatewayFormatError
        When only one of the two records is there, or either has the wrong type.
    """
    arrays, metrics = content.get(AGGREGATE), content.get(AGGREGATE_METRICS)
    if arrays is None and metrics is None:
        return None
    if not isinstance(arrays, ArrayRecord) or not isinstance(metrics, MetricRecord):
        raise GatewayFormatError(
            f"an aggregate needs an ArrayRecord {AGGREGATE!r} and a MetricRecord "
            f"{AGGREGATE_METRICS!r}"
        )
    return arrays, metrics


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


EdgeFilter = Callable[[ArrayRecord, Sequence[ArrayRecord], Sequence[float]], Sequence[str | None]]
"""``(model sent, trained models, weights) -> refusal reason or None per device``."""
EDGE = "gateway.edge"
"""The ``ConfigRecord`` of a device refused at the edge (``reason``)."""


@dataclass(frozen=True)
class Aggregation:
    """How an aggregating gateway combines its devices' train replies.

    ``weight_key`` is the ``MetricRecord`` key of a device's example count, the weight of the
    average. ``edge_filter(model, updates, weights)``, if set, gets the model the devices trained
    from, their trained models and weights, and returns a refusal reason (or ``None``) per
    device; refused devices stay out of the average and their content gets a ``gateway.edge``
    ``ConfigRecord`` with the reason.
    """

    weight_key: str = "num-examples"
    edge_filter: EdgeFilter | None = None


LATE_AT_GATEWAY_ERROR_CODE = 4205
"""Error code of a device its gateway did not start: the message's time budget was spent."""


def gateway_mod(
    devices_of: Callable[[Context], Sequence[int] | None],
    device_key: str = "device-id",
    aggregation_of: Callable[[Context], Aggregation | None] = lambda context: None,
    budget_of: Callable[[Context], float | None] = lambda context: None,
    clock: Callable[[], float] = time.monotonic,
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
    aggregation_of : callable
        The node's :class:`Aggregation` for a run, or ``None`` (the default) for a relaying
        gateway; an aggregating one answers a train message with its devices' average (see the
        module docstring).
    budget_of : callable
        Seconds a gateway may spend on one message (``None``, the default: no limit). Its
        devices are served one after another, so one slow device delays every device's answer;
        with a budget, a device not started when the budget is spent is answered with an error
        (:data:`LATE_AT_GATEWAY_ERROR_CODE`) instead, and the reply leaves in time with the
        devices that did train. A device already training is not interrupted.
    clock : callable
        Seconds, monotonic (the budget's clock).
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
        budget, started = budget_of(context), clock()
        replies: dict[int, DeviceReply] = {}
        for device, content in addressed.items():
            if not isinstance(content, RecordDict):
                raise GatewayFormatError(f"the message for device {device} is an error")
            spent = clock() - started
            if budget is not None and spent > budget:
                replies[device] = Error(
                    code=LATE_AT_GATEWAY_ERROR_CODE,
                    reason=(
                        f"not started: the gateway had spent {spent:.1f} s of its {budget:g} s "
                        "for this message on the devices before it"
                    ),
                )
                continue
            replies[device] = _serve(msg, content, context, device, device_key, call_next)
        aggregation = aggregation_of(context)
        if aggregation is not None and msg.metadata.message_type == MessageType.TRAIN:
            return Message(_aggregate(addressed, replies, aggregation), reply_to=msg)
        return Message(pack_replies(replies), reply_to=msg)

    return mod


def _aggregate(
    addressed: Mapping[int, DeviceReply],
    replies: Mapping[int, DeviceReply],
    aggregation: Aggregation,
) -> RecordDict:
    """An aggregating gateway's reply: the average, and each device's content without its model."""
    weight_key, edge_filter = aggregation.weight_key, aggregation.edge_filter
    trained = {d: r for d, r in replies.items() if isinstance(r, RecordDict)}
    sent = next(
        (
            record
            for content in addressed.values()
            if isinstance(content, RecordDict)
            for record in content.values()
            if isinstance(record, ArrayRecord)
        ),
        None,
    )
    # A model that is not the sent model's layout, or not finite, would break or poison the
    # average of every device of the gateway: it is refused here, alone.
    refused: dict[int, str] = {}
    judged: dict[int, tuple[ArrayRecord, dict[str, np.ndarray], float]] = {}
    for device, content in trained.items():
        found = _model_and_weight(content, weight_key)
        if found is None:
            continue
        model, weight = found
        checked = (
            _checked(model, sent) if sent is not None else {k: a.numpy() for k, a in model.items()}
        )
        if isinstance(checked, str):
            refused[device] = f"malformed update: {checked}"
        else:
            judged[device] = (model, checked, weight)
    if edge_filter is not None and sent is not None and judged:
        reasons = edge_filter(
            sent, [m for m, _, _ in judged.values()], [w for _, _, w in judged.values()]
        )
        refused |= {d: r for d, r in zip(judged, reasons, strict=True) if r is not None}
    included = [(values, w) for d, (_, values, w) in judged.items() if d not in refused]
    out: dict[int, DeviceReply] = {}
    for device, reply in replies.items():
        if not isinstance(reply, RecordDict):
            out[device] = reply
            continue
        kept = RecordDict({k: r for k, r in reply.items() if not isinstance(r, ArrayRecord)})
        if device in refused:
            kept[EDGE] = ConfigRecord({"reason": refused[device]})
        out[device] = kept
    packed = pack_replies(out)
    if included:
        packed[AGGREGATE] = _weighted_mean(included)
        packed[AGGREGATE_METRICS] = MetricRecord(
            {weight_key: sum(w for _, w in included), AGGREGATED_DEVICES: len(included)}
        )
    return packed


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
