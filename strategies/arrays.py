"""Zero-copy access to the arrays in Flower records, and streaming reductions over many updates.

Flower's ``Array.numpy()`` runs ``np.load`` on the serialized bytes, which copies every update
(4 MB per update at one million float32 parameters). The aggregation hot path here instead reads
the ``.npy`` header once (numpy's own header reader, which never unpickles; parsed headers are
cached by their bytes) and views the payload in place with ``np.frombuffer``: no copy, no
``gc.collect()`` (the trap of ``keep_input=False`` conversions), and a malformed payload is caught
while parsing instead of deep inside numpy.

The reductions (update norms, the weighted average) walk the parameters in chunks of
:data:`CHUNK` elements with the chunk loop outside the update loop, so the running sums stay in the
CPU cache while the updates stream past; each update is read exactly once per reduction.
"""

from __future__ import annotations

import io
import math
import tokenize
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord
from numpy.lib.format import (
    MAGIC_PREFIX,
    read_array_header_1_0,
    read_array_header_2_0,
    read_magic,
)

SUPPORTED_KINDS = "fiub"
"""dtype kinds a model may hold: floating-point parameters, integer and boolean buffers."""

CHUNK = 65_536
"""Elements per chunk in the streaming reductions (256 KiB of float32: fits in L2)."""

# numpy's header reader by format version. Version 3 (UTF-8 field names) is structured only.
_HEADER_READERS = {1: read_array_header_1_0, 2: read_array_header_2_0}
# Parsed headers by their bytes: every reply of a round shares the global model's headers.
_HEADER_CACHE: OrderedDict[bytes, _Header] = OrderedDict()
_HEADER_CACHE_SIZE = 1024


class ArrayFormatError(ValueError):
    """An Array's payload is not a well-formed, pickle-free ``.npy`` buffer."""


@dataclass(frozen=True)
class _Header:
    dtype: np.dtype
    dtype_name: str
    shape: tuple[int, ...]
    fortran: bool
    count: int


def _parse_header(prefix: bytes) -> _Header:
    """Read an ``.npy`` header with numpy's reader, then refuse what numpy would still load.

    numpy's reader evaluates the header as a literal (no code runs) and checks its keys, the
    ``fortran_order`` flag and the ``descr``; it caps the header at 10,000 characters.
    """
    stream = io.BytesIO(prefix)
    try:
        major, _ = read_magic(stream)
        shape, fortran, dtype = _HEADER_READERS[major](stream)
    except (
        ValueError,
        SyntaxError,  # np.dtype(",f4")
        RecursionError,  # deeply nested literals
        MemoryError,  # the parser's stack overflows at about 9,000 nested operators
        tokenize.TokenError,  # unterminated literals
        UserWarning,  # a Python 2 header, where warnings are errors
    ) as error:
        # numpy's message can quote the whole header over several lines: one short line here
        detail = " ".join(str(error).split())[:200]
        raise ArrayFormatError(
            f"unreadable .npy header (a dict of exactly descr, fortran_order, shape): {detail}"
        ) from None
    # numpy takes any int as a dimension, negative ones and bools included
    if not all(not isinstance(s, bool) and s >= 0 for s in shape):
        raise ArrayFormatError(f"invalid shape {shape!r} in the .npy header")
    # and any dtype: objects are pickles, fields and subarrays are no model parameters
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise ArrayFormatError(f"dtype {dtype} is not a plain numeric dtype")
    return _Header(dtype, str(dtype), shape, fortran, math.prod(shape))


def npy_view(data: bytes) -> tuple[np.ndarray, tuple[int, ...]]:
    """View the payload of serialized ``.npy`` bytes in place.

    Parameters
    ----------
    data : bytes
        The ``Array.data`` of a numpy-serialized Flower ``Array``.

    Returns
    -------
    tuple[np.ndarray, tuple[int, ...]]
        A read-only, one-dimensional view of the values in C order, and the array's shape.

    Raises
    ------
    ArrayFormatError
        If the bytes are not a complete ``.npy`` buffer of a plain numeric dtype.
    """
    flat, header = _npy_view(data)
    return flat, header.shape


def _npy_view(data: bytes) -> tuple[np.ndarray, _Header]:
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) < 10:
        raise ArrayFormatError("payload too short for an .npy buffer")
    if bytes(data[:6]) != MAGIC_PREFIX:
        raise ArrayFormatError("payload does not start with the .npy magic")
    major = data[6]
    if major not in _HEADER_READERS:
        raise ArrayFormatError(f"unsupported .npy format version {major}")
    # The header's length, for the cache key (numpy reads it only while parsing): 2 bytes after
    # the magic and version in format 1, 4 bytes in format 2.
    length_bytes = 2 if major == 1 else 4
    start = 8 + length_bytes + int.from_bytes(data[8 : 8 + length_bytes], "little")
    if start > len(data):
        raise ArrayFormatError("truncated .npy header")
    prefix = bytes(data[:start])
    parsed = _HEADER_CACHE.get(prefix)
    if parsed is None:
        parsed = _parse_header(prefix)
        _HEADER_CACHE[prefix] = parsed
        if len(_HEADER_CACHE) > _HEADER_CACHE_SIZE:
            _HEADER_CACHE.popitem(last=False)
    nbytes = parsed.count * parsed.dtype.itemsize
    if len(data) - start != nbytes:
        raise ArrayFormatError(
            f"payload holds {len(data) - start} bytes, the header promises {nbytes}"
        )
    flat = np.frombuffer(data, dtype=parsed.dtype, count=parsed.count, offset=start)
    if parsed.fortran and len(parsed.shape) > 1:
        # Rare (np.asfortranarray on the client): one copy to C order keeps coordinates aligned.
        flat = np.ascontiguousarray(flat.reshape(parsed.shape[::-1]).T).ravel()
    return flat, parsed


@dataclass(frozen=True)
class ArraySpec:
    """Name, dtype and shape of one array of the global model."""

    key: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        """Whether the array is a floating-point parameter (integer buffers are not scored)."""
        return bool(np.issubdtype(self.dtype, np.floating))


def decode_array(array: Array) -> tuple[np.ndarray, np.dtype, tuple[int, ...]]:
    """Decode one Flower ``Array`` into a flat view, checking that its metadata is honest.

    Raises
    ------
    ArrayFormatError
        If the serialization type is not numpy, or the declared dtype/shape contradict the payload.
    """
    if not isinstance(array, Array):
        raise ArrayFormatError(f"expected an Array, found {type(array).__name__}")
    if array.stype != "numpy.ndarray":
        raise ArrayFormatError(f"unsupported serialization type {array.stype!r}")
    flat, header = _npy_view(array.data)
    if array.dtype != header.dtype_name or tuple(array.shape) != header.shape:
        raise ArrayFormatError(
            f"declared {array.dtype}{list(array.shape)} but the payload is "
            f"{header.dtype_name}{list(header.shape)}"
        )
    return flat, header.dtype, header.shape


@dataclass(frozen=True)
class ModelSpec:
    """The layout of the global model that updates are checked against.

    Built from the ``ArrayRecord`` a strategy sends in ``configure_train``: every reply must carry
    the same keys with the same dtypes and shapes.
    """

    arrays: tuple[ArraySpec, ...]
    global_views: dict[str, np.ndarray] | None

    @classmethod
    def from_arrayrecord(cls, record: ArrayRecord) -> ModelSpec:
        """Describe ``record`` and keep zero-copy views of its values (the update origin)."""
        specs, views = [], {}
        for key, array in record.items():
            flat, dtype, shape = decode_array(array)
            if dtype.kind not in SUPPORTED_KINDS:
                raise ArrayFormatError(f"array {key!r} has unsupported dtype {dtype}")
            specs.append(ArraySpec(key, dtype, shape))
            views[key] = flat
        return cls(tuple(specs), views)

    @property
    def keys(self) -> tuple[str, ...]:
        """Array names in the model's order."""
        return tuple(s.key for s in self.arrays)

    @property
    def float_arrays(self) -> tuple[ArraySpec, ...]:
        """The floating-point arrays: the coordinates that norms and scores look at."""
        return tuple(s for s in self.arrays if s.is_float)

    @property
    def num_float(self) -> int:
        """Number of floating-point coordinates."""
        return sum(s.size for s in self.float_arrays)


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """float64 stays float64; every narrower float is reduced in float32."""
    return np.dtype(np.float64) if dtype.itemsize >= 8 else np.dtype(np.float32)


def squared_update_norms(
    updates: Sequence[dict[str, np.ndarray]], spec: ModelSpec, chunk: int = CHUNK
) -> np.ndarray:
    """Squared L2 norm of each update ``x_i - g`` over the floating-point arrays, in one pass.

    Parameters
    ----------
    updates : Sequence[dict[str, np.ndarray]]
        Flat views of each reply's arrays, keyed like ``spec``.
    spec : ModelSpec
        The global model; ``g`` is ``spec.global_views`` (zero when it is ``None``).
    chunk : int
        Elements per chunk.

    Returns
    -------
    np.ndarray
        ``float64`` array of shape ``(n,)``. Any NaN or Inf in an update makes its entry non-finite,
        which doubles as the malformed-value check without a separate ``isfinite`` pass.
    """
    out = np.zeros(len(updates), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is the signal, not an error
        _accumulate_norms(out, updates, spec, chunk)
    return out


def _accumulate_norms(
    out: np.ndarray, updates: Sequence[dict[str, np.ndarray]], spec: ModelSpec, chunk: int
) -> None:
    for arr in spec.float_arrays:
        work = _work_dtype(arr.dtype)
        buf = np.empty(min(chunk, max(arr.size, 1)), dtype=work)
        origin = None if spec.global_views is None else spec.global_views[arr.key]
        for start in range(0, arr.size, chunk):
            stop = min(start + chunk, arr.size)
            b = buf[: stop - start]
            g = None if origin is None else origin[start:stop]
            for i, update in enumerate(updates):
                v = update[arr.key][start:stop]
                if g is None:
                    np.copyto(b, v, casting="same_kind")
                else:
                    np.subtract(v, g, out=b, dtype=work)
                out[i] += float(np.dot(b, b))


def weighted_average(
    updates: Sequence[dict[str, np.ndarray]],
    weights: np.ndarray,
    spec: ModelSpec,
    chunk: int = CHUNK,
) -> dict[str, np.ndarray]:
    """``sum_i w_i x_i / sum_i w_i`` for every array, streaming over zero-copy views.

    Parameters
    ----------
    updates : Sequence[dict[str, np.ndarray]]
        Flat views of each accepted reply's arrays, keyed like ``spec``.
    weights : np.ndarray
        Non-negative weights with a positive sum, one per update.
    spec : ModelSpec
        Keys, dtypes and shapes of the result.
    chunk : int
        Elements per chunk.

    Returns
    -------
    dict[str, np.ndarray]
        One array per key with the model's dtype and shape (0-d arrays stay 0-d), so that the
        next round's replies match the model they were trained from.

    Notes
    -----
    Floating-point arrays are accumulated in their own precision (float32 for float32, like
    Flower's FedAvg). Integer and boolean buffers (BatchNorm's ``num_batches_tracked``) are the
    same weighted mean, accumulated in float64 and rounded to the nearest integer (half to even;
    for booleans a weighted majority, ties to ``False``): the rule that bounds every other
    coordinate bounds them too, whereas a maximum would let one device set a counter to any
    value. Integers above 2**53 lose precision in the float64 mean.
    """
    w = np.asarray(weights, dtype=np.float64)
    if len(updates) != len(w) or len(w) == 0:
        raise ValueError(f"need one weight per update, got {len(w)} for {len(updates)}")
    total = float(w.sum())
    if not np.isfinite(total) or total <= 0 or (w < 0).any():
        raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
    factors = w / total
    result: dict[str, np.ndarray] = {}
    for arr in spec.arrays:
        work = _work_dtype(arr.dtype) if arr.is_float else np.dtype(np.float64)
        acc = np.zeros(arr.size, dtype=work)
        buf = np.empty(min(chunk, max(arr.size, 1)), dtype=work)
        for start in range(0, arr.size, chunk):
            stop = min(start + chunk, arr.size)
            a, b = acc[start:stop], buf[: stop - start]
            for factor, update in zip(factors, updates, strict=True):
                np.multiply(update[arr.key][start:stop], factor, out=b, dtype=work)
                np.add(a, b, out=a)
        if not arr.is_float:
            acc = np.rint(acc)
        result[arr.key] = acc.astype(arr.dtype, copy=False).reshape(arr.shape)
    return result


def to_arrayrecord(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Wrap numpy arrays (in the given key order) into a Flower ``ArrayRecord``.

    Shapes are kept exactly: ``np.ascontiguousarray`` would turn a 0-d array into shape ``(1,)``.
    """
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


def restore_layout(record: ArrayRecord, spec: ModelSpec) -> tuple[ArrayRecord, list[str]]:
    """Cast the arrays of an aggregate back to the layout of the model that was sent.

    A wrapper cannot know how the strategy inside it aggregates: Flower's FedAvg, for one,
    returns integer buffers as float64 (``value * weight``), and every reply of the next round
    would then fail the layout check. Whatever the inner strategy did, the model it returns gets
    the sent model's dtypes and shapes back: integer and boolean arrays are rounded to the
    nearest value (half to even) and clipped to their dtype's range, non-finite entries of them
    keep the sent model's value (0 without one), and an array of the right size is reshaped.

    Parameters
    ----------
    record : ArrayRecord
        The aggregate returned by a strategy.
    spec : ModelSpec
        The layout (and, when known, the values) of the model sent in ``configure_train``.

    Returns
    -------
    tuple[ArrayRecord, list[str]]
        The record in the sent model's key order (``record`` itself when it already matches),
        and one line per array that could not be restored (missing, extra, of another size or
        unreadable); those are left as they are.
    """
    problems: list[str] = []
    keys = list(record.keys())
    if set(keys) != set(spec.keys):
        missing = sorted(set(spec.keys) - set(keys))
        extra = sorted(set(keys) - set(spec.keys))
        return record, [f"array keys differ from the sent model: missing {missing}, extra {extra}"]
    if all(
        record[s.key].dtype == str(s.dtype) and tuple(record[s.key].shape) == s.shape
        for s in spec.arrays
    ) and keys == list(spec.keys):
        return record, problems
    restored: dict[str, Array] = {}
    for s in spec.arrays:
        array = record[s.key]
        if array.dtype == str(s.dtype) and tuple(array.shape) == s.shape:
            restored[s.key] = array
            continue
        try:
            values = array.numpy()
        except (TypeError, ValueError) as error:
            problems.append(f"array {s.key!r} is unreadable: {error}")
            restored[s.key] = array
            continue
        if values.size != s.size:
            problems.append(f"array {s.key!r} has {values.size} values, the sent model {s.size}")
            restored[s.key] = array
            continue
        restored[s.key] = Array(_cast(values.reshape(s.shape), s, spec.global_views))
    return ArrayRecord(restored), problems


def _cast(values: np.ndarray, spec: ArraySpec, origin: dict[str, np.ndarray] | None) -> np.ndarray:
    if spec.is_float or values.dtype.kind not in "fc":
        return np.asarray(values.astype(spec.dtype), order="C")
    real = np.real(values).astype(np.float64)
    fallback = np.zeros(spec.shape) if origin is None else origin[spec.key].reshape(spec.shape)
    real = np.where(np.isfinite(real), real, fallback)
    if spec.dtype.kind == "b":
        return np.asarray(np.rint(real) != 0, order="C")
    info = np.iinfo(spec.dtype)
    high = float(info.max)
    if int(high) > info.max:  # 2**63 - 1 rounds up to 2**63 in float64
        high = float(np.nextafter(high, 0.0))
    real = np.clip(np.rint(real), float(info.min), high)
    return np.asarray(real.astype(spec.dtype), order="C")
