"""Screening of reply Messages: every malformed reply is rejected with a reason, none can crash.

Flower's ``FedAvg`` raises ``InconsistentMessageReplies`` on one reply with a missing key or an
extra record, which ends the run. The functions here look at each reply on its own, against the
layout of the global model the strategy sent, and turn every problem into a :class:`Rejection`
(device, node, reason, kind). What survives is a :class:`ParsedReply`: zero-copy views of the
arrays plus the identity and sample count the strategies need.

Identity: a reply's device is ``content["device"]["device-id"]`` (fl-iot's protocol: a device is
not a Flower node) and falls back to ``metadata.src_node_id`` in plain Flower apps. Keys are
``str`` of an int, so reports stay JSON-friendly and parse back with ``int()``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fl_iot import protocol as P
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

FAILED = "failed"
"""Rejection kind of an error reply: the device reported that it could not train."""
MALFORMED = "malformed"
"""Rejection kind of a reply whose content cannot be aggregated."""
ANOMALOUS = "anomalous"
"""Rejection kind of a well-formed update that the anomaly scores single out."""


@dataclass(frozen=True)
class Rejection:
    """Why one reply was excluded from aggregation."""

    device: str
    node_id: int
    reason: str
    kind: str


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


def node_of(message: Message) -> int:
    """The Flower node that sent ``message``."""
    return int(message.metadata.src_node_id)


def device_key(content: RecordDict, node_id: int) -> str:
    """The device a reply speaks for: ``device-id`` when present, else the node id.

    Raises
    ------
    ValueError
        If a ``device`` ConfigRecord is present but carries no integer ``device-id``.
    """
    record = content.get(P.DEVICE)
    if record is None:
        return str(node_id)
    if not isinstance(record, ConfigRecord):
        raise ValueError(f"record {P.DEVICE!r} is not a ConfigRecord")
    value = record.get(P.DEVICE_ID)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{P.DEVICE_ID!r} must be an int, found {value!r}")
    return str(value)


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
    node_devices: Mapping[int, str],
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
    node_devices : Mapping[int, str]
        Node id to device key, learned from earlier replies; names the device of an error reply.

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
        node = node_of(msg)
        if msg.has_error():
            device = node_devices.get(node, str(node))
            rejected.append(Rejection(device, node, f"error reply: {msg.error.reason}", FAILED))
            continue
        if not msg.has_content():
            rejected.append(
                Rejection(node_devices.get(node, str(node)), node, "empty reply", MALFORMED)
            )
            continue
        content = msg.content
        try:
            device = device_key(content, node)
        except ValueError as error:
            rejected.append(Rejection(str(node), node, str(error), MALFORMED))
            continue
        try:
            (arrays_key, record), (metrics_key, metrics) = _records(content)
            count = sample_count(metrics, weight_key)
            if spec is None:
                raise ValueError("no reply carries a readable model")
            views = _decode(record, spec.arrays)
        except (ValueError, TypeError, KeyError) as error:
            rejected.append(Rejection(device, node, str(error), MALFORMED))
            continue
        parsed.append(
            ParsedReply(msg, device, node, count, views, arrays_key, record, metrics_key, metrics)
        )
    # A device id may speak through one reply per round; duplicates are all dropped, so the
    # outcome cannot depend on which copy arrived first.
    copies = Counter(p.device for p in parsed)
    for p in parsed:
        if copies[p.device] > 1:
            rejected.append(
                Rejection(
                    p.device, p.node_id, f"{copies[p.device]} replies claim this device", MALFORMED
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
    replies: Iterable[Message], weight_key: str
) -> tuple[list[Message], list[tuple[int, str]]]:
    """Keep evaluate replies that Flower's metric averaging can digest, as sanitized copies.

    Returns the copies (one MetricRecord each, common keys only, valid weight) and
    ``(node_id, reason)`` for every dropped reply.
    """
    kept: list[tuple[Message, str, MetricRecord]] = []
    dropped: list[tuple[int, str]] = []
    for msg in replies:
        node = node_of(msg)
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
            rejected.append(Rejection(p.device, p.node_id, reason, MALFORMED))
        elif max_update_norm is not None and math.sqrt(sq) > max_update_norm:
            rejected.append(
                Rejection(
                    p.device,
                    p.node_id,
                    f"update norm {math.sqrt(sq):.3g} exceeds max_update_norm {max_update_norm:g}",
                    MALFORMED,
                )
            )
        else:
            kept.append(p)
            norms.append(math.sqrt(sq))
    return kept, rejected, np.asarray(norms, dtype=np.float64)
