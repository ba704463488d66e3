"""Screening of reply Messages: every malformed reply is rejected with a reason, none can crash.

Flower's ``FedAvg`` raises ``InconsistentMessageReplies`` on one reply with a missing key or an
extra record, which ends the run. The functions here look at each reply on its own, against the
layout of the global model the strategy sent, and turn every problem into a :class:`Rejection`
(device, node, reason, kind). What survives is a :class:`ParsedReply`: zero-copy views of the
arrays plus the identity and sample count the strategies need.

Identity never comes from what a reply says about itself. A reply belongs to the node its
message was sent to (:func:`answered_node`: the destination of the message named by
``metadata.reply_to_message_id``; on the Deployment Engine the SuperLink answers for a dead node
itself, with an error reply whose source is its own node id 1), and that node is a device
through a *roster*, ``{node_id: device_key}``, that the application builds before the first
round (fl-iot's roll call) and hands to the strategies with ``set_roster``:

- with a roster, a node that is not in it is refused ("node N is not in the roster"), and a
  reply whose ``device`` ConfigRecord claims another device id than the roster's is refused as
  a spoof (the claim is ``content[DEVICE_RECORD][DEVICE_ID_KEY]``, which fl-iot's protocol
  uses too);
- without one (a plain Flower app), the device is the node: ``str(node_id)``, and whatever the
  content claims is ignored.

Device keys are strings (``str`` of the device id in fl-iot), so reports stay JSON-friendly.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.supercore import log

from strategies.arrays import (
    SUPPORTED_KINDS,
    ArrayFormatError,
    ArraySpec,
    ModelSpec,
    decode_array,
    squared_update_norms,
)
from strategies.report import device_order
from strategies.weighting import is_finite_metric

DEVICE_RECORD = "device"
"""The ConfigRecord of a reply in which it may claim a device, under :data:`DEVICE_ID_KEY`."""
DEVICE_ID_KEY = "device-id"
"""The integer device id a reply claims in :data:`DEVICE_RECORD`."""


class RejectionKind(StrEnum):
    """Why a reply was excluded; the value is a device's ``status`` in round reports."""

    FAILED = "failed"
    """An error reply: the device reported that it could not train."""
    MALFORMED = "malformed"
    """Content that cannot be aggregated."""
    ANOMALOUS = "anomalous"
    """A well-formed update that the anomaly scores single out."""
    SPOOF = "spoof"
    """A claim of another device than the roster's for the node."""
    UNKNOWN = "unknown"
    """A node that is not in the roster: no device's history moves."""


@dataclass(frozen=True)
class Rejection:
    """Why one reply was excluded from aggregation."""

    device: str
    node_id: int
    reason: str
    kind: RejectionKind


@dataclass
class ParsedReply:
    """A structurally valid train reply, with zero-copy views of its arrays."""

    message: Message
    device: str
    node_id: int
    num_examples: float
    arrays: dict[str, np.ndarray]
    arrays_key: str
    array_record: ArrayRecord
    metrics_key: str
    metrics: MetricRecord


def sent_destinations(messages: Iterable[Message]) -> dict[str, int]:
    """``{message_id: dst_node_id}`` of the messages a grid has pushed.

    A message gets its id when a grid pushes it, not when it is built: ``InMemoryGrid`` (the
    Simulation Engine) writes a fresh UUID into the message object, ``HttpGrid`` (the Deployment
    Engine) its content hash (``Message.object_id``), and both write it into the very object
    handed to ``push_messages``/``send_and_receive``. So call this after sending, on the
    messages that were sent; messages without an id (never pushed) are left out.
    """
    return {
        m.metadata.message_id: int(m.metadata.dst_node_id)
        for m in messages
        if m.metadata.message_id
    }


def answered_node(reply: Message, sent: Mapping[str, int]) -> int | None:
    """The node ``reply`` answers: the destination of the message it replies to.

    ``None`` for a reply to none of ``sent``. This is the node to charge a reply to, error
    replies included: the SuperLink accepts a reply only from the node its message was sent to,
    and its own error reply for a node it found dead (source node 1) still names the message
    it answers.

    Parameters
    ----------
    reply : Message
        A reply pulled from the grid.
    sent : Mapping[str, int]
        ``{message_id: dst_node_id}`` of the messages sent (:func:`sent_destinations`).
    """
    reply_to = reply.metadata.reply_to_message_id
    return sent.get(reply_to) if reply_to else None


def node_of(message: Message, sent: Mapping[str, int] | None = None) -> int:
    """The node a reply is charged to: :func:`answered_node`, else its ``src_node_id``.

    The fallback covers replies to messages this strategy did not see pushed (used without
    ``configure_train``, or handed replies built by hand); the SuperLink vouches for
    ``src_node_id`` of a reply from a node.
    """
    node = answered_node(message, sent) if sent else None
    return int(message.metadata.src_node_id) if node is None else node


class Outbox:
    """The metadata of the messages a strategy sent per round, to map replies to their nodes.

    Only ``Metadata`` is kept (not the messages, which hold the model): a grid writes the
    message id into it when it pushes the message, after ``configure_*`` has returned, so the
    ids are read when the replies are aggregated.
    """

    def __init__(self, keep_rounds: int = 32) -> None:
        self._rounds: OrderedDict[int, list[Metadata]] = OrderedDict()
        self._keep = keep_rounds

    def record(self, server_round: int, messages: Iterable[Message]) -> None:
        """Remember the messages configured for ``server_round``."""
        self._rounds[server_round] = [m.metadata for m in messages]
        self._rounds.move_to_end(server_round)
        while len(self._rounds) > self._keep:
            self._rounds.popitem(last=False)

    def nodes(self, server_round: int) -> set[int]:
        """The nodes the round's messages went to."""
        return {int(m.dst_node_id) for m in self._rounds.get(server_round, [])}

    def sent(self, server_round: int) -> dict[str, int]:
        """``{message_id: dst_node_id}`` of the round's messages that have been pushed."""
        return {
            m.message_id: int(m.dst_node_id)
            for m in self._rounds.get(server_round, [])
            if m.message_id
        }


def check_roster(roster: Mapping[int, str | int] | None) -> dict[int, str] | None:
    """Validate a ``{node_id: device_key}`` roster; device ids given as ints become strings.

    Raises
    ------
    ValueError
        If it is not a mapping, a node id is not an int, a device key is neither a non-empty
        string nor an int, or two nodes are the same device.
    """
    if roster is None:
        return None
    if not isinstance(roster, Mapping):
        raise ValueError(f"roster must map node ids to device keys, got {type(roster).__name__}")
    checked: dict[int, str] = {}
    owner: dict[str, int] = {}
    for node, device in roster.items():
        if isinstance(node, bool) or not isinstance(node, int):
            raise ValueError(f"roster node ids must be ints, got {node!r}")
        if isinstance(device, bool) or not isinstance(device, str | int) or device == "":
            raise ValueError(
                f"roster device keys must be non-empty strings or ints, got {device!r} "
                f"for node {node}"
            )
        key = str(device)
        if key in owner:
            raise ValueError(f"roster: device {key} is on two nodes, {owner[key]} and {node}")
        owner[key] = node
        checked[node] = key
    return checked


def roster_device(node: int, roster: Mapping[int, str] | None) -> str | None:
    """The device key of ``node``: the roster's, or ``str(node)`` without a roster.

    ``None`` when there is a roster and it does not know the node.
    """
    return str(node) if roster is None else roster.get(node)


def claimed_device(content: RecordDict) -> int | None:
    """The device id a reply claims in its ``device`` ConfigRecord, ``None`` if it claims none.

    Only ever compared with the roster (a mismatch is a spoof), never used as the identity.

    Raises
    ------
    ValueError
        If a ``device`` record is present but is no ConfigRecord or carries no integer
        ``device-id``.
    """
    record = content.get(DEVICE_RECORD)
    if record is None:
        return None
    if not isinstance(record, ConfigRecord):
        raise ValueError(f"record {DEVICE_RECORD!r} is not a ConfigRecord")
    value = record.get(DEVICE_ID_KEY)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{DEVICE_ID_KEY!r} must be an int, found {value!r}")
    return value


def log_rejection(rejection: Rejection) -> None:
    """Log one rejection: spoofs and unknown nodes at WARNING, everything else at INFO."""
    level = WARNING if rejection.kind in (RejectionKind.SPOOF, RejectionKind.UNKNOWN) else INFO
    log(
        level,
        "aggregate_train: rejected device %s (node %d): %s",
        rejection.device,
        rejection.node_id,
        rejection.reason,
    )


def sample_count(metrics: MetricRecord, key: str) -> float:
    """The reply's claimed sample count.

    Raises
    ------
    ValueError
        If it is missing, not a scalar number, not finite or not positive.
    """
    if key not in metrics:
        raise ValueError(f"metric {key!r} is missing")
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"metric {key!r} must be a number, found {type(value).__name__}")
    count = float(value)
    if not math.isfinite(count) or count <= 0:
        raise ValueError(f"metric {key!r} must be positive and finite, found {value!r}")
    return count


def _records(content: RecordDict) -> tuple[tuple[str, ArrayRecord], tuple[str, MetricRecord]]:
    """The reply's only ArrayRecord and only MetricRecord (ConfigRecords may be any number).

    One pass over ``content.items()``: Flower's ``array_records``/``metric_records`` properties
    build and type-check a new dict on every access, which costs more than the rest of the
    screening at a thousand replies.

    Raises
    ------
    ValueError
        If there is not exactly one of each.
    """
    arrays, metrics = [], []
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            arrays.append((key, record))
        elif isinstance(record, MetricRecord):
            metrics.append((key, record))
    if len(arrays) != 1:
        raise ValueError(f"expected exactly one ArrayRecord, found {len(arrays)}")
    if len(metrics) != 1:
        raise ValueError(f"expected exactly one MetricRecord, found {len(metrics)}")
    return arrays[0], metrics[0]


def _metrics_only(content: RecordDict) -> tuple[str, MetricRecord]:
    found = [(k, r) for k, r in content.items() if isinstance(r, MetricRecord)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one MetricRecord, found {len(found)}")
    return found[0]


def _decode(record: ArrayRecord, layout: Sequence[ArraySpec]) -> dict[str, np.ndarray]:
    expected = [s.key for s in layout]
    present = list(record.keys())
    if set(present) != set(expected):
        missing = sorted(set(expected) - set(present))
        extra = sorted(set(present) - set(expected))
        raise ValueError(
            f"array keys differ from the global model: missing {missing}, extra {extra}"
        )
    views = {}
    for spec in layout:
        try:
            flat, dtype, shape = decode_array(record[spec.key])
        except ArrayFormatError as error:
            raise ValueError(f"array {spec.key!r}: {error}") from None
        if dtype != spec.dtype or shape != spec.shape:
            raise ValueError(
                f"array {spec.key!r} is {dtype}{list(shape)}, "
                f"the global model has {spec.dtype}{list(spec.shape)}"
            )
        views[spec.key] = flat
    return views


def _layout_of(content: RecordDict) -> tuple[ArraySpec, ...] | None:
    """The layout a reply claims, for guessing the model when no global model was captured."""
    try:
        (_, record), _ = _records(content)
        layout = tuple(ArraySpec(k, *decode_array(a)[1:]) for k, a in record.items())
        if any(spec.dtype.kind not in SUPPORTED_KINDS for spec in layout):
            return None
        return layout
    except (ValueError, ArrayFormatError, TypeError):
        return None


def infer_spec(replies: Iterable[Message]) -> ModelSpec | None:
    """The most common array layout among the replies, for strategies used without a global model.

    Ties are broken by the layout's text so that the choice does not depend on reply order.
    Updates are then scored as raw parameters (``global_views`` is ``None``).
    """
    layouts: Counter[tuple[ArraySpec, ...]] = Counter()
    for msg in replies:
        if msg.has_content() and (layout := _layout_of(msg.content)) is not None:
            layouts[layout] += 1
    if not layouts:
        return None
    best = max(layouts.items(), key=lambda item: (item[1], -len(repr(item[0])), repr(item[0])))
    return ModelSpec(best[0], None)


def screen_train_replies(
    replies: Iterable[Message],
    spec: ModelSpec | None,
    weight_key: str,
    roster: Mapping[int, str] | None = None,
    sent: Mapping[str, int] | None = None,
) -> tuple[list[ParsedReply], list[Rejection], ModelSpec | None]:
    """Split train replies into well-formed ones and rejections, never raising.

    Parameters
    ----------
    replies : Iterable[Message]
        The round's replies, in any order.
    spec : ModelSpec or None
        The global model sent in ``configure_train``; ``None`` infers the layout from the replies.
    weight_key : str
        The MetricRecord key holding the sample count (``"num-examples"``).
    roster : Mapping[int, str] or None
        ``{node_id: device_key}`` (see the module docstring); ``None``: devices are node ids.
    sent : Mapping[str, int] or None
        ``{message_id: dst_node_id}`` of the round's messages, to charge each reply (an error
        reply from the SuperLink too) to the node it answers (:func:`node_of`).

    Returns
    -------
    tuple[list[ParsedReply], list[Rejection], ModelSpec or None]
        Accepted replies sorted by device key, rejections sorted by device key, and the spec used.
        Values (NaN/Inf, norms) are checked later by the norm pass, not here.
    """
    replies = list(replies)
    if spec is None:
        spec = infer_spec(replies)
    parsed: list[ParsedReply] = []
    rejected: list[Rejection] = []
    for msg in replies:
        node = node_of(msg, sent)
        device = roster_device(node, roster)
        if device is None:
            reason = f"node {node} is not in the roster"
            rejected.append(Rejection(f"node-{node}", node, reason, RejectionKind.UNKNOWN))
            continue
        if msg.has_error():
            rejected.append(
                Rejection(device, node, f"error reply: {msg.error.reason}", RejectionKind.FAILED)
            )
            continue
        if not msg.has_content():
            rejected.append(Rejection(device, node, "empty reply", RejectionKind.MALFORMED))
            continue
        content = msg.content
        try:
            claim = claimed_device(content) if roster is not None else None
        except ValueError as error:
            rejected.append(Rejection(device, node, str(error), RejectionKind.MALFORMED))
            continue
        if claim is not None and str(claim) != device:
            reason = f"spoof: claims device {claim}, the roster says {device}"
            rejected.append(Rejection(device, node, reason, RejectionKind.SPOOF))
            continue
        try:
            (arrays_key, record), (metrics_key, metrics) = _records(content)
            count = sample_count(metrics, weight_key)
            if spec is None:
                raise ValueError("no reply carries a readable model")
            views = _decode(record, spec.arrays)
        except (ValueError, TypeError, KeyError) as error:
            rejected.append(Rejection(device, node, str(error), RejectionKind.MALFORMED))
            continue
        parsed.append(
            ParsedReply(msg, device, node, count, views, arrays_key, record, metrics_key, metrics)
        )
    # One reply per device and round: a node answers each message once, so copies mean a
    # replayed or duplicated reply. All are dropped, so the outcome cannot depend on which
    # copy arrived first.
    copies = Counter(p.device for p in parsed)
    for p in parsed:
        if copies[p.device] > 1:
            rejected.append(
                Rejection(
                    p.device,
                    p.node_id,
                    f"{copies[p.device]} replies for this device",
                    RejectionKind.MALFORMED,
                )
            )
    parsed = sorted(
        (p for p in parsed if copies[p.device] == 1), key=lambda p: device_order(p.device)
    )
    rejected.sort(key=lambda r: (device_order(r.device), r.node_id, r.reason))
    return parsed, rejected, spec


def _form(value: object) -> tuple[str, int] | None:
    """``("scalar", 0)``, ``("list", length)``, or ``None`` for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return ("scalar", 0)
    if isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        return ("list", len(value))
    return None


def common_metric_keys(metrics: Sequence[MetricRecord]) -> list[str]:
    """Keys that every record has, as a scalar in all or as a list of one length in all.

    Ordered as in the first record (the order Flower's metric averaging produces).
    """
    if not metrics:
        return []
    common = {k: _form(v) for k, v in metrics[0].items()}
    for record in metrics[1:]:
        common = {k: f for k, f in common.items() if k in record and _form(record[k]) == f}
    return [k for k, f in common.items() if f is not None]


def sanitized_metrics(
    metrics: Sequence[MetricRecord], weight_key: str, weights: Sequence[float] | None = None
) -> list[MetricRecord]:
    """Copies of the MetricRecords restricted to entries every reply has, finite, in one form.

    Flower's metric averaging raises on keys that differ between replies (a DP device class that
    reports ``epsilon`` next to one that does not) and on lists of different lengths. Keeping only
    the common entries makes any Flower strategy safe to call; ``weights``, when given, replaces
    the ``weight_key`` value so that metrics are averaged with the strategy's final weights.

    A key whose value is NaN or Inf in any reply (a list: in any element) is dropped for the
    round: the function these copies go to (a wrapped Flower strategy, a custom
    ``*_metrics_aggr_fn``) averages every record with one set of weights and cannot leave one
    reply out of one key, and an averaged NaN would reach the user as the round's metric.
    (Where :class:`~strategies.ReliabilityWeightedFedAvg` averages itself, only the non-finite
    entry is left out: :func:`~strategies.weighting.weighted_metrics`.)
    """
    keep = [
        k
        for k in common_metric_keys(metrics)
        if k == weight_key or all(is_finite_metric(record[k]) for record in metrics)
    ]
    out = []
    for i, record in enumerate(metrics):
        copy = MetricRecord({k: record[k] for k in keep})
        if weights is not None:
            copy[weight_key] = float(weights[i])
        out.append(copy)
    return out


def with_records(
    content: RecordDict,
    *,
    metrics: tuple[str, MetricRecord],
    arrays: tuple[str, ArrayRecord] | None = None,
) -> RecordDict:
    """A new RecordDict holding ``content``'s ConfigRecords plus the given records.

    The ArrayRecord is shared, not copied: only the container is new, so a wrapped strategy that
    replaces records (Flower's DP clipping does) cannot touch the caller's reply.
    """
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        k: r for k, r in content.items() if isinstance(r, ConfigRecord)
    }
    if arrays is not None:
        records[arrays[0]] = arrays[1]
    records[metrics[0]] = metrics[1]
    return RecordDict(records)


def clone_reply(message: Message, content: RecordDict) -> Message:
    """A reply with the same metadata and new content (the caller's Message is left untouched)."""
    return Message(metadata=message.metadata, content=content)  # type: ignore[call-overload]


def screen_evaluate_replies(
    replies: Iterable[Message], weight_key: str, sent: Mapping[str, int] | None = None
) -> tuple[list[Message], list[tuple[int, str]]]:
    """Keep evaluate replies that Flower's metric averaging can digest, as sanitized copies.

    Returns the copies (one MetricRecord each, common keys only, valid weight) and
    ``(node_id, reason)`` for every dropped reply, the node being the one it answers
    (:func:`node_of` with ``sent``).
    """
    kept: list[tuple[Message, str, MetricRecord]] = []
    dropped: list[tuple[int, str]] = []
    for msg in replies:
        node = node_of(msg, sent)
        if msg.has_error():
            dropped.append((node, f"error reply: {msg.error.reason}"))
            continue
        try:
            if not msg.has_content():
                raise ValueError("empty reply")
            metrics_key, metrics = _metrics_only(msg.content)
            sample_count(metrics, weight_key)
        except (ValueError, TypeError) as error:
            dropped.append((node, str(error)))
            continue
        kept.append((msg, metrics_key, metrics))
    if not kept:
        return [], dropped
    clean = sanitized_metrics([m for _, _, m in kept], weight_key)
    copies = [
        clone_reply(msg, with_records(msg.content, metrics=(key, m)))
        for (msg, key, _), m in zip(kept, clean, strict=True)
    ]
    return copies, dropped


def check_values(
    parsed: Sequence[ParsedReply], spec: ModelSpec, max_update_norm: float | None = None
) -> tuple[list[ParsedReply], list[Rejection], np.ndarray]:
    """One streaming pass over every parameter: update norms, NaN/Inf and absurd norms.

    Parameters
    ----------
    parsed : Sequence[ParsedReply]
        Structurally valid replies.
    spec : ModelSpec
        The model layout and update origin.
    max_update_norm : float or None
        Updates with a larger L2 norm are rejected as absurd; ``None`` disables the bound
        (the robust norm score still applies).

    Returns
    -------
    tuple[list[ParsedReply], list[Rejection], np.ndarray]
        Replies with finite, bounded updates, the rejections, and the kept updates' norms.
    """
    if not parsed:
        return [], [], np.zeros(0)
    squared = squared_update_norms([p.arrays for p in parsed], spec)
    kept, rejected, norms = [], [], []
    for p, sq in zip(parsed, squared, strict=True):
        if not math.isfinite(sq):
            bad = [a.key for a in spec.float_arrays if not np.isfinite(p.arrays[a.key]).all()]
            reason = (
                f"NaN or Inf values in {bad}" if bad else "update norm overflows (absurd values)"
            )
            rejected.append(Rejection(p.device, p.node_id, reason, RejectionKind.MALFORMED))
        elif max_update_norm is not None and math.sqrt(sq) > max_update_norm:
            rejected.append(
                Rejection(
                    p.device,
                    p.node_id,
                    f"update norm {math.sqrt(sq):.3g} exceeds max_update_norm {max_update_norm:g}",
                    RejectionKind.MALFORMED,
                )
            )
        else:
            kept.append(p)
            norms.append(math.sqrt(sq))
    return kept, rejected, np.asarray(norms, dtype=np.float64)
