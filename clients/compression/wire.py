"""Compressed traffic: a client mod encodes each update, one function decodes it; the model down.

A device encodes the difference between the model it trained and the global model it received
(flattened over the floating-point arrays, in the received model's key order), adds the error
it kept from earlier rounds when error feedback is on, and replies with the codec's bytes in a
``ConfigRecord`` (:data:`COMPRESSED`) instead of the ``ArrayRecord``. Non-float arrays (integer
buffers such as BatchNorm's batch counter) stay in the ``ArrayRecord`` as they are: they are
a few bytes and not a difference.

The server decodes with :func:`decode_update` against the model it sent, before any screening
or aggregation, so every strategy (``trusted`` included) judges the update the device meant.
What cannot be decoded (another codec, another model's size, an index out of range, a NaN
scale) raises :class:`ValueError`, which the caller turns into a refused reply.

Error feedback (Karimireddy et al., ICML 2019; Stich et al., NeurIPS 2018): the residual
``v - decode(encode(v))`` is kept in ``context.state`` (:data:`RESIDUAL`) and added to the next
round's update, so what top-k leaves out is sent later instead of lost. It is reset when the
model's size changes.

The downlink: :func:`encode_model` compresses the global model itself (the device holds nothing
to add a difference to) with its float arrays' layout beside the bytes, and
:func:`model_decoder_mod` decodes it on the device before the handlers; the server decodes each
update against the model as the device decoded it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message import make_message
from flwr.clientapp.typing import ClientAppCallable, Mod

from clients.compression.codecs import Codec

COMPRESSED = "compressed-update"
"""ConfigRecord of a compressed train reply: ``codec`` (its name) and ``data`` (its bytes)."""
COMPRESSED_MODEL = "compressed-model"
"""ConfigRecord of a message whose model travels compressed: ``codec``, ``data``, and the
layout of the float arrays (``keys``, ``ndims``, ``shape``, ``dtypes``)."""
RESIDUAL = "compression.residual"
"""Key in ``context.state`` of the error-feedback residual (one float32 vector)."""


@dataclass(frozen=True)
class Compression:
    """A codec and whether its error is fed back into the next round."""

    name: str
    codec: Codec
    error_feedback: bool = False


def float_keys(arrays: ArrayRecord) -> list[str]:
    """The keys of ``arrays`` whose dtype is floating point, in order."""
    return [key for key, array in arrays.items() if np.dtype(array.dtype).kind == "f"]


def encode_update(
    content: RecordDict,
    received: ArrayRecord,
    compression: Compression,
    residual: np.ndarray | None,
    rng: np.random.Generator,
    record: str = "arrays",
) -> tuple[RecordDict, np.ndarray | None]:
    """``content`` with its ``record`` replaced by the compressed difference to ``received``.

    Returns the new content and the residual to keep (``None`` without error feedback). A reply
    whose arrays do not have ``received``'s keys and shapes, or hold a NaN or an infinity, is
    returned as it is, the residual untouched: the server judges it as any reply.
    """
    local = content.get(record)
    if not isinstance(local, ArrayRecord) or list(local.keys()) != list(received.keys()):
        return content, residual
    keys = float_keys(received)
    parts = []
    for key in keys:
        new, old = local[key].numpy(), received[key].numpy()
        if new.shape != old.shape:
            return content, residual
        parts.append((new.astype(np.float64) - old.astype(np.float64)).ravel())
    vector = np.concatenate(parts) if parts else np.zeros(0)
    if not np.isfinite(vector).all():
        return content, residual
    if compression.error_feedback and residual is not None and residual.size == vector.size:
        vector = vector + residual
    data = compression.codec.encode(vector.astype(np.float32), rng)
    kept = None
    if compression.error_feedback:
        kept = (vector - compression.codec.decode(data, vector.size)).astype(np.float32)
    encoded = RecordDict({name: value for name, value in content.items() if name != record})
    others = {k: local[k] for k in local if k not in keys}
    if others:
        encoded[record] = ArrayRecord(others)
    encoded[COMPRESSED] = ConfigRecord({"codec": compression.name, "data": data})
    return encoded, kept


def is_compressed(content: RecordDict) -> bool:
    """Whether a reply carries a compressed update."""
    return COMPRESSED in content


def decode_update(
    content: RecordDict, sent: ArrayRecord, compression: Compression, record: str = "arrays"
) -> RecordDict:
    """``content`` with its compressed update decoded into a full ``record`` against ``sent``.

    Content without a compressed update is returned as it is (a device may send its model
    uncompressed: it pays the bytes, and the strategy screens it like any reply).

    Raises
    ------
    ValueError
        If the payload is not one of ``compression``'s for ``sent``'s model (see the module).
    """
    if COMPRESSED not in content:
        return content
    payload = content.get(COMPRESSED)
    if not isinstance(payload, ConfigRecord):
        raise ValueError(f"record {COMPRESSED!r} is not a ConfigRecord")
    if payload.get("codec") != compression.name:
        raise ValueError(
            f"update compressed with {payload.get('codec')!r}, expected {compression.name!r}"
        )
    data = payload.get("data")
    if not isinstance(data, bytes):
        raise ValueError(f"{COMPRESSED!r} has no bytes under 'data'")
    keys = float_keys(sent)
    sizes = [int(np.prod(sent[key].shape)) for key in keys]
    vector = compression.codec.decode(data, sum(sizes))
    plain = content.get(record)
    plain_arrays = plain if isinstance(plain, ArrayRecord) else ArrayRecord()
    arrays: dict[str, Array] = {}
    offset = 0
    float_set = set(keys)
    for key in sent:
        base = sent[key].numpy()
        if key in float_set:
            delta = vector[offset : offset + base.size].reshape(base.shape)
            offset += base.size
            arrays[key] = Array(np.asarray(base + delta.astype(base.dtype)).astype(base.dtype))
            continue
        if key not in plain_arrays:
            raise ValueError(f"compressed update lacks the non-float array {key!r}")
        value = plain_arrays[key].numpy()
        if value.shape != base.shape or value.dtype != base.dtype:
            raise ValueError(
                f"array {key!r} is {value.dtype}{list(value.shape)}, the model's "
                f"{base.dtype}{list(base.shape)}"
            )
        arrays[key] = Array(value)
    extra = [key for key in plain_arrays if key not in sent]
    if extra:
        raise ValueError(f"compressed update has arrays the model lacks: {extra[:3]}")
    decoded = RecordDict(
        {name: value for name, value in content.items() if name not in (record, COMPRESSED)}
    )
    decoded[record] = ArrayRecord(arrays)
    return decoded


def encode_model(
    content: RecordDict, compression: Compression, rng: np.random.Generator, record: str = "arrays"
) -> RecordDict:
    """``content`` with the float arrays of its model ``record`` compressed (the downlink).

    The model itself is encoded, not a difference: the device holds nothing to add one to. Its
    float arrays' layout travels beside the bytes, non-float arrays stay as they are. Error
    feedback does not apply. A codec that keeps a fraction of the values (``topk``) would zero
    the rest of the model: use ``float16`` or ``qsgd`` here.
    """
    model = content.get(record)
    if not isinstance(model, ArrayRecord):
        return content
    keys = float_keys(model)
    values = [model[key].numpy() for key in keys]
    vector = np.concatenate([v.ravel() for v in values]) if values else np.zeros(0, np.float32)
    encoded = RecordDict({name: value for name, value in content.items() if name != record})
    others = {k: model[k] for k in model if k not in keys}
    if others:
        encoded[record] = ArrayRecord(others)
    encoded[COMPRESSED_MODEL] = ConfigRecord(
        {
            "codec": compression.name,
            "data": compression.codec.encode(vector.astype(np.float32), rng),
            "keys": keys,
            "ndims": [v.ndim for v in values],
            "shape": [int(n) for v in values for n in v.shape],
            "dtypes": [str(v.dtype) for v in values],
        }
    )
    return encoded


def decode_model(
    content: RecordDict, compression: Compression, record: str = "arrays"
) -> RecordDict:
    """``content`` with a compressed model (:func:`encode_model`) decoded into ``record``.

    Content without one is returned as it is. The float arrays come first, in the order sent.

    Raises
    ------
    ValueError
        If the payload is not one of ``compression``'s, or its layout is inconsistent.
    """
    if COMPRESSED_MODEL not in content:
        return content
    payload = content.get(COMPRESSED_MODEL)
    if not isinstance(payload, ConfigRecord) or payload.get("codec") != compression.name:
        raise ValueError(f"the model is not compressed with {compression.name!r}")
    keys, ndims = payload.get("keys"), payload.get("ndims")
    dims, dtypes, data = payload.get("shape"), payload.get("dtypes"), payload.get("data")
    if not (
        isinstance(keys, list)
        and isinstance(ndims, list)
        and isinstance(dims, list)
        and isinstance(dtypes, list)
        and isinstance(data, bytes)
        and len(keys) == len(ndims) == len(dtypes)
        and sum(int(n) for n in ndims) == len(dims)
    ):
        raise ValueError("the compressed model's layout is inconsistent")
    shapes, position = [], 0
    for n in ndims:
        shapes.append(tuple(int(d) for d in dims[position : position + int(n)]))
        position += int(n)
    sizes = [int(np.prod(shape)) for shape in shapes]
    vector = compression.codec.decode(data, sum(sizes))
    arrays: dict[str, Array] = {}
    offset = 0
    for key, shape, size, dtype in zip(keys, shapes, sizes, dtypes, strict=True):
        part = vector[offset : offset + size].reshape(shape).astype(np.dtype(str(dtype)))
        arrays[str(key)] = Array(np.asarray(part))
        offset += size
    plain = content.get(record)
    if isinstance(plain, ArrayRecord):
        arrays.update({k: plain[k] for k in plain})
    decoded = RecordDict(
        {name: value for name, value in content.items() if name not in (record, COMPRESSED_MODEL)}
    )
    decoded[record] = ArrayRecord(arrays)
    return decoded


CompressionOf = Callable[[Message, Context], Compression | None]
"""Which compression a device uses for a message (``None``: send it uncompressed)."""


def model_decoder_mod(compression: Compression | CompressionOf, record: str = "arrays") -> Mod:
    """A client mod that decodes a compressed global model before the handlers see it.

    Outside :func:`compression_mod`, so that the update is encoded against the model the device
    decoded, which is the one the server decodes the update against.
    """
    choose = compression if callable(compression) else (lambda msg, context: compression)

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.has_content() and COMPRESSED_MODEL in msg.content:
            setting = choose(msg, context)
            if setting is None:
                raise ValueError("the model arrived compressed, and no downlink codec is set")
            # A new message: the one received may be the sender's own object (in process).
            msg = make_message(
                copy.copy(msg.metadata), content=decode_model(msg.content, setting, record)
            )
        return call_next(msg, context)

    return mod


"""Which compression a device uses for a message (``None``: send it uncompressed)."""
SeedOf = Callable[[Message, Context], int]


def compression_mod(
    compression: Compression | CompressionOf,
    seed_of: SeedOf | None = None,
    record: str = "arrays",
) -> Mod:
    """A Flower client mod that compresses the ``record`` of every successful train reply.

    ``compression`` is one setting for every device, or a function choosing it per message (a
    setting per device class). ``seed_of`` seeds the stochastic rounding (fresh entropy without
    it). The residual of error feedback lives in ``context.state`` under :data:`RESIDUAL`.
    """
    choose = compression if callable(compression) else (lambda msg, context: compression)

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        setting = choose(msg, context)
        received = msg.content.get(record) if msg.has_content() else None
        if (
            setting is None
            or msg.metadata.message_type != "train"
            or reply.has_error()
            or not isinstance(received, ArrayRecord)
        ):
            return reply
        kept = context.state.get(RESIDUAL)
        residual = kept["residual"].numpy() if isinstance(kept, ArrayRecord) else None
        seed = seed_of(msg, context) if seed_of is not None else None
        content, residual = encode_update(
            reply.content, received, setting, residual, np.random.default_rng(seed), record
        )
        if residual is not None:
            context.state[RESIDUAL] = ArrayRecord({"residual": Array(residual)})
        reply.content = content
        return reply

    return mod
