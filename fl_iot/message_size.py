"""Bytes of messages as Flower serialises them: for the simulated clock and for the bill.

Flower 1.42 ships a message as a tree of objects (the message, its record dict, each record,
each array, each array's chunks), each serialised by its ``deflate()``; the sums here are of
those serialisations, so they are what crosses the wire, not an estimate from parameter counts.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import NamedTuple

from flwr.app import Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import InflatableObject, get_all_nested_objects


def _deflated_bytes(root: InflatableObject, fallback: Iterable[InflatableObject]) -> int:
    """Bytes of ``root`` and everything below it.

    A record Flower could not serialise (a value out of protobuf's range, which only a reply
    built in this process can hold) counts nothing, rather than ending the round.
    """
    try:
        objects = list(get_all_nested_objects(root).values())
    except (ValueError, OverflowError, TypeError):
        objects = list(fallback)
    total = 0
    for obj in objects:
        try:
            total += len(obj.deflate())
        except (ValueError, OverflowError, TypeError):
            continue
    return total


def wire_bytes(message: Message | RecordDict) -> int:
    """Bytes of a message's content: its serialised records and arrays.

    The header (ids, timestamps; some 200 bytes) is left out: its size depends on the random
    node and message ids of a run, and the simulated clock must not.
    """
    content = message.content if isinstance(message, Message) else message
    return _deflated_bytes(content, content.values())


def header_bytes(message: Message) -> int:
    """Bytes of the message object itself: its metadata and its error or content reference.

    With :func:`wire_bytes` of its content, the whole message as it is shipped.
    """
    try:
        return len(message.deflate())
    except (ValueError, OverflowError, TypeError):
        return 0


def payload_bytes(content: RecordDict, names: Iterable[str]) -> int:
    """Bytes of the records ``names`` of ``content`` (the model, or the compressed update)."""
    return sum(_deflated_bytes(record, [record]) for name in names if (record := content.get(name)))


class ReplyBytes(NamedTuple):
    """A reply's bytes as it came: its content, its header, and each of its records."""

    content: int
    header: int
    records: dict[str, int]

    def of(self, names: Iterable[str]) -> int:
        """Bytes of the records ``names`` (as :func:`payload_bytes` counts them)."""
        return sum(self.records.get(name, 0) for name in names)


_MEASURED: weakref.WeakKeyDictionary[Message, tuple[RecordDict | None, ReplyBytes]] = (
    weakref.WeakKeyDictionary()
)


def reply_bytes(reply: Message) -> ReplyBytes:
    """The bytes of a reply (:func:`wire_bytes`, :func:`header_bytes`, :func:`payload_bytes`).

    Measured once per reply and content: whoever first holds the reply can measure it (a
    gateway grid measures the replies it unpacks while later gateways are still training) and
    the round loop then reads the same figures. Each serialised object is deflated once, rather
    than once for each figure.
    """
    content = reply.content if reply.has_content() else None
    cached = _MEASURED.get(reply)
    if cached is not None and cached[0] is content:
        return cached[1]
    records: dict[str, int] = {}
    unique: dict[str, int] = {}
    own = 0
    if content is not None:
        for name, record in content.items():
            sizes: dict[str, int] = {}
            try:
                _subtree_bytes(record, record.object_id, sizes)
                records[name] = sum(sizes.values())
            except (ValueError, OverflowError, TypeError):
                sizes = {}
                records[name] = 0
            unique.update(sizes)
        try:
            own = len(content.deflate())
        except (ValueError, OverflowError, TypeError):
            own = 0
    measured = ReplyBytes(sum(unique.values()) + own, header_bytes(reply), records)
    _MEASURED[reply] = (content, measured)
    return measured


def _subtree_bytes(obj: InflatableObject, object_id: str, sizes: dict[str, int]) -> None:
    """Add the bytes of ``obj`` and of everything below it to ``sizes`` (by object id, once)."""
    if object_id in sizes:
        return
    for child_id, child in (obj.children or {}).items():
        _subtree_bytes(child, child_id, sizes)
    sizes[object_id] = len(obj.deflate())
