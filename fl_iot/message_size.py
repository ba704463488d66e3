"""Bytes of messages as Flower serialises them: for the simulated clock and for the bill.

Flower 1.42 ships a message as a tree of objects (the message, its record dict, each record,
each array, each array's chunks), each serialised by its ``deflate()``; the sums here are of
those serialisations, so they are what crosses the wire, not an estimate from parameter counts.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import NamedTuple

from flwr.app import ArrayRecord, Message, RecordDict
from flwr.app.message.message import make_message
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
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


def charge_share(reply: Message, name: str, share: int) -> None:
    """Add ``share`` bytes under record ``name`` to ``reply``'s measured bytes.

    For a device whose gateway ships one average for several devices: each pays an equal share
    of it (rounded to the byte), so the devices' bytes add up to what the gateway sent. Measures
    the reply first if nobody has.
    """
    measured = reply_bytes(reply)
    records = {**measured.records, name: measured.records.get(name, 0) + share}
    charged = ReplyBytes(measured.content + share, measured.header, records)
    _MEASURED[reply] = (reply.content if reply.has_content() else None, charged)


def reply_bytes(reply: Message) -> ReplyBytes:
    """The bytes of a reply (:func:`wire_bytes`, :func:`header_bytes`, :func:`payload_bytes`).

    Measured once per reply and content: whoever first holds the reply can measure it (a
    gateway grid measures the replies it unpacks) and the round loop then reads the same
    figures.

    Flower's serialised size of an ``ArrayRecord`` depends only on its layout: the arrays'
    names, dtypes, shapes and storage types, and which of its chunks are identical (Flower
    stores identical objects once); every byte of array data is carried as it is and every
    object id is a SHA-256 of fixed length. An ``ArrayRecord`` is therefore serialised once per
    layout and its size looked up for every later reply of that layout (1,000 replies a round
    of one model share one), instead of deflating and hashing every update again; records
    without arrays are deflated, as they are small and their size depends on their values. A
    reply whose records share array chunks is measured object by object.
    """
    content = reply.content if reply.has_content() else None
    cached = _MEASURED.get(reply)
    if cached is not None and cached[0] is content:
        return cached[1]
    if content is None:
        measured = ReplyBytes(0, header_bytes(reply), {})
    else:
        try:
            measured = _by_layout(reply, content)
        except _SharedChunks:
            measured = _object_by_object(reply, content)
    _MEASURED[reply] = (content, measured)
    return measured


class _SharedChunks(Exception):  # noqa: N818 (a signal inside this module, not an error)
    """Two records of one content hold an identical chunk: their sizes are not independent."""


_LAYOUT_BYTES: dict[object, int] = {}
_ROOT_BYTES: dict[object, int] = {}
_MAX_LAYOUTS = 4096


def _by_layout(reply: Message, content: RecordDict) -> ReplyBytes:
    records: dict[str, int] = {}
    distinct: dict[object, int] = {}  # identity of a record -> its bytes (identical ones once)
    owners: dict[bytes, int] = {}
    for index, (name, record) in enumerate(content.items()):
        if isinstance(record, ArrayRecord):
            layout = _layout(record, index, owners)
            size = _LAYOUT_BYTES.get(layout)
            if size is None:
                size = _deflated_bytes(record, [record])  # once per layout
                if len(_LAYOUT_BYTES) >= _MAX_LAYOUTS:
                    _LAYOUT_BYTES.clear()
                _LAYOUT_BYTES[layout] = size
            identity: object = ("arrays", index)  # no chunk in common: not identical
        else:
            try:
                body = record.deflate()
            except (ValueError, OverflowError, TypeError):
                records[name] = 0
                continue
            size, identity = len(body), body
        records[name] = distinct[identity] = size
    root_key = (tuple(content.keys()), len(distinct))
    root = _ROOT_BYTES.get(root_key)
    if root is None:
        try:
            root = len(content.deflate())
        except (ValueError, OverflowError, TypeError):
            root = 0
        if len(_ROOT_BYTES) >= _MAX_LAYOUTS:
            _ROOT_BYTES.clear()
        _ROOT_BYTES[root_key] = root
    return ReplyBytes(root + sum(distinct.values()), _header_bytes_of(reply), records)


def _layout(record: ArrayRecord, owner: int, owners: dict[bytes, int]) -> tuple[object, ...]:
    """An array record's layout: per array its metadata and the pattern of identical chunks."""
    numbering: dict[bytes, int] = {}
    arrays = []
    for key, array in record.items():
        data = array.data if isinstance(array.data, bytes) else bytes(array.data)
        chunks = []
        for start in range(0, len(data), FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE):
            chunk = data[start : start + FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE]
            if owners.setdefault(chunk, owner) != owner:
                raise _SharedChunks
            chunks.append(numbering.setdefault(chunk, len(numbering)))
        arrays.append((key, array.dtype, tuple(array.shape), array.stype, tuple(chunks)))
    return tuple(arrays)


def _header_bytes_of(reply: Message) -> int:
    """:func:`header_bytes` without hashing the content: its id has the same length for any."""
    return header_bytes(make_message(reply.metadata, content=RecordDict()))


def _object_by_object(reply: Message, content: RecordDict) -> ReplyBytes:
    records: dict[str, int] = {}
    unique: dict[str, int] = {}
    for name, record in content.items():
        sizes: dict[str, int] = {}
        try:
            _subtree_bytes(record, record.object_id, sizes)
        except (ValueError, OverflowError, TypeError):
            sizes = {}
        records[name] = sum(sizes.values())
        unique.update(sizes)
    try:
        own = len(content.deflate())
    except (ValueError, OverflowError, TypeError):
        own = 0
    return ReplyBytes(sum(unique.values()) + own, header_bytes(reply), records)


def _subtree_bytes(obj: InflatableObject, object_id: str, sizes: dict[str, int]) -> None:
    """Add the bytes of ``obj`` and of everything below it to ``sizes`` (by object id, once)."""
    if object_id in sizes:
        return
    for child_id, child in (obj.children or {}).items():
        _subtree_bytes(child, child_id, sizes)
    sizes[object_id] = len(obj.deflate())
