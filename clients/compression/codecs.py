"""Update codecs: a float vector to compact bytes and back, with every decoded byte checked.

Each codec is a pure pair ``encode(vector, rng) -> bytes`` / ``decode(data, size) -> vector`` over
the flattened float update (the device's model minus the global model it received). The byte
layouts carry no names, shapes or dtypes: the server knows them from the model it sent
(:mod:`clients.compression.wire`). ``decode`` is the server's side and treats its input as hostile:
a wrong length, an index out of range or repeated, a NaN or infinite scale or value raises
:class:`ValueError`, never anything else.

- ``float16``: every value as IEEE half precision (2 bytes a value, 50 % of float32).
- ``qsgd``: stochastic quantisation to ``bits`` (8 or 4) per value with one float32 scale per
  chunk of ``chunk_size`` values (QSGD, Alistarh et al., NeurIPS 2017, with per-chunk scales):
  a value ``x`` in a chunk of largest magnitude ``s`` becomes the integer ``floor(|x| / s * L +
  u) * sign(x)``, ``u ~ U[0, 1)``, ``L = 2**(bits - 1) - 1``, which is unbiased.
- ``topk``: the ``fraction`` of values of largest magnitude, their positions as LEB128 varints of
  the gaps between them (1 byte per index while gaps stay under 128), their values as float16,
  or quantised to 8 bits with one scale (``value_bits=8``). Meant with error feedback
  (:mod:`clients.compression.wire`), which keeps what was not sent for the next round.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

_HEADER = struct.Struct("<BI")  # codec id, number of values encoded
_SCALE = np.dtype("<f4")


def _header(codec_id: int, size: int) -> bytes:
    return _HEADER.pack(codec_id, size)


def _body(data: bytes, codec_id: int, size: int) -> memoryview:
    """``data`` after its header, once the header says this codec and this many values."""
    if len(data) < _HEADER.size:
        raise ValueError(f"payload of {len(data)} bytes is shorter than its header")
    found_id, found_size = _HEADER.unpack_from(data)
    if found_id != codec_id:
        raise ValueError(f"payload is of codec {found_id}, expected {codec_id}")
    if found_size != size:
        raise ValueError(f"payload holds {found_size} values, the model has {size}")
    return memoryview(data)[_HEADER.size :]


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"payload has non-finite {what}")
    return values


@dataclass(frozen=True)
class Float16:
    """Every value in half precision."""

    codec_id = 1

    def encode(self, vector: np.ndarray, rng: np.random.Generator) -> bytes:  # noqa: D102
        clipped = np.clip(vector, -65504.0, 65504.0)  # float16's range: no infinities
        return _header(self.codec_id, vector.size) + clipped.astype("<f2").tobytes()

    def decode(self, data: bytes, size: int) -> np.ndarray:  # noqa: D102
        body = _body(data, self.codec_id, size)
        if len(body) != 2 * size:
            raise ValueError(f"float16 payload has {len(body)} bytes for {size} values")
        return _finite(np.frombuffer(body, dtype="<f2").astype(np.float32), "values")


@dataclass(frozen=True)
class Qsgd:
    """Stochastic ``bits``-bit quantisation with a float32 scale per chunk (see the module)."""

    bits: int = 8
    chunk_size: int = 512

    codec_id = 2

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"qsgd bits must be 4 or 8, got {self.bits!r}")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"qsgd chunk_size must be an int >= 1, got {self.chunk_size!r}")

    @property
    def levels(self) -> int:
        """Largest magnitude of a quantised value."""
        return 2 ** (self.bits - 1) - 1

    def encode(self, vector: np.ndarray, rng: np.random.Generator) -> bytes:  # noqa: D102
        chunks = math.ceil(vector.size / self.chunk_size)
        flat = np.zeros(chunks * self.chunk_size, dtype=np.float64)
        flat[: vector.size] = vector
        padded = flat.reshape(chunks, self.chunk_size)
        scales = np.abs(padded).max(axis=1)
        safe = np.where(scales > 0, scales, 1.0)[:, None]
        magnitude = np.floor(np.abs(padded) / safe * self.levels + rng.random(padded.shape))
        quantised = (np.sign(padded) * np.minimum(magnitude, self.levels)).ravel()[: vector.size]
        if self.bits == 8:
            values = quantised.astype(np.int8).tobytes()
        else:
            nibbles = (quantised + self.levels).astype(np.uint8)  # 0 .. 14
            if nibbles.size % 2:
                nibbles = np.append(nibbles, np.uint8(self.levels))
            values = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()
        return _header(self.codec_id, vector.size) + scales.astype(_SCALE).tobytes() + values

    def decode(self, data: bytes, size: int) -> np.ndarray:  # noqa: D102
        body = _body(data, self.codec_id, size)
        chunks = math.ceil(size / self.chunk_size)
        value_bytes = size if self.bits == 8 else (size + 1) // 2
        if len(body) != 4 * chunks + value_bytes:
            raise ValueError(
                f"qsgd payload has {len(body)} bytes; {chunks} scales and {size} values of "
                f"{self.bits} bits take {4 * chunks + value_bytes}"
            )
        scales = np.frombuffer(body[: 4 * chunks], dtype=_SCALE).astype(np.float64)
        if not np.isfinite(scales).all() or (scales < 0).any():
            raise ValueError("qsgd payload has a non-finite or negative scale")
        raw = np.frombuffer(body[4 * chunks :], dtype=np.uint8)
        if self.bits == 8:
            quantised = raw.view(np.int8).astype(np.float64)
        else:
            nibbles = np.empty(raw.size * 2, dtype=np.int16)
            nibbles[0::2], nibbles[1::2] = raw & 0x0F, raw >> 4
            quantised = (nibbles[:size] - self.levels).astype(np.float64)
        if np.abs(quantised).max(initial=0) > self.levels:
            raise ValueError(f"qsgd payload has a value beyond ±{self.levels}")
        per_value = np.repeat(scales, self.chunk_size)[:size]
        return (quantised * per_value / self.levels).astype(np.float32)


@dataclass(frozen=True)
class TopK:
    """The ``fraction`` of values of largest magnitude (see the module)."""

    fraction: float = 0.01
    value_bits: int = 16

    codec_id = 3

    def __post_init__(self) -> None:
        if not (isinstance(self.fraction, int | float) and 0 < self.fraction <= 1):
            raise ValueError(f"topk fraction must be in (0, 1], got {self.fraction!r}")
        if self.value_bits not in (8, 16):
            raise ValueError(f"topk value_bits must be 8 or 16, got {self.value_bits!r}")

    def count(self, size: int) -> int:
        """How many values of ``size`` are sent."""
        return min(size, max(1, math.ceil(self.fraction * size))) if size else 0

    def encode(self, vector: np.ndarray, rng: np.random.Generator) -> bytes:  # noqa: D102
        k = self.count(vector.size)
        chosen = np.sort(np.argpartition(np.abs(vector), vector.size - k)[vector.size - k :])
        gaps = np.diff(chosen, prepend=-1) - 1
        values = vector[chosen]
        if self.value_bits == 16:
            encoded = np.clip(values, -65504.0, 65504.0).astype("<f2").tobytes()
        else:
            scale = float(np.abs(values).max(initial=0.0))
            q = np.round(values / (scale if scale > 0 else 1.0) * 127).astype(np.int8)
            encoded = np.float32(scale).astype(_SCALE).tobytes() + q.tobytes()
        return _header(self.codec_id, vector.size) + struct.pack("<I", k) + _varints(gaps) + encoded

    def decode(self, data: bytes, size: int) -> np.ndarray:  # noqa: D102
        body = _body(data, self.codec_id, size)
        if len(body) < 4:
            raise ValueError("topk payload has no count")
        (k,) = struct.unpack_from("<I", body)
        if k != self.count(size):
            raise ValueError(f"topk payload sends {k} values, expected {self.count(size)}")
        gaps, used = _read_varints(body[4:], k)
        positions = np.cumsum(gaps + 1) - 1  # strictly increasing: no index repeats
        if k and positions[-1] >= size:
            raise ValueError(f"topk payload has an index {int(positions[-1])} >= {size}")
        rest = body[4 + used :]
        if self.value_bits == 16:
            if len(rest) != 2 * k:
                raise ValueError(f"topk payload has {len(rest)} value bytes for {k} values")
            values = _finite(np.frombuffer(rest, dtype="<f2").astype(np.float32), "values")
        else:
            if len(rest) != 4 + k:
                raise ValueError(f"topk payload has {len(rest)} value bytes for {k} values")
            scale = float(np.frombuffer(rest[:4], dtype=_SCALE)[0])
            if not math.isfinite(scale) or scale < 0:
                raise ValueError("topk payload has a non-finite or negative scale")
            q = np.frombuffer(rest[4:], dtype=np.int8).astype(np.float32)
            values = q / 127 * np.float32(scale)
        vector = np.zeros(size, dtype=np.float32)
        vector[positions] = values
        return vector


Codec = Float16 | Qsgd | TopK


def _varints(values: np.ndarray) -> bytes:
    """Non-negative ints as LEB128 varints (7 bits a byte, high bit: more follows)."""
    out = bytearray()
    for value in values.tolist():
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)


def _read_varints(data: memoryview, count: int) -> tuple[np.ndarray, int]:
    """``count`` LEB128 varints from the start of ``data``, and the bytes they took."""
    values = np.empty(count, dtype=np.int64)
    position = 0
    for i in range(count):
        value = shift = 0
        while True:
            if position >= len(data):
                raise ValueError("topk payload ends inside its indices")
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 35:
                raise ValueError("topk payload has an index gap of more than 5 bytes")
        values[i] = value
    return values, position
