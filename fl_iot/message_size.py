"""Bytes of messages as Flower serialises them: for the simulated clock and for the bill.

Flower 1.42 ships a message as a tree of objects (the message, its record dict, each record,
each array, each array's chunks), each serialised by its ``deflate()``; the sums here are of
those serialisations, so they are what crosses the wire, not an estimate from parameter counts.
"""

from __future__ import annotations

from collections.abc import Iterable

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
