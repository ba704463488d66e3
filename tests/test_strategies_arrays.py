"""Zero-copy decoding and the streaming reductions of strategies.arrays."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from strategies.arrays import (
    ArrayFormatError,
    ModelSpec,
    decode_array,
    npy_view,
    restore_layout,
    squared_update_norms,
    to_arrayrecord,
    weighted_average,
)


def _header(text: str) -> bytes:
    body = text.encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_npy_view_is_a_zero_copy_view_of_the_payload() -> None:
    # Prepare
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    data = _npy(array)
    # Execute
    flat, shape = npy_view(data)
    # Assert
    assert shape == (3, 4)
    assert np.array_equal(flat, array.ravel())
    assert not flat.flags.writeable
    assert np.shares_memory(flat, np.frombuffer(data, dtype=np.uint8))


def test_npy_view_puts_fortran_ordered_arrays_in_c_order() -> None:
    array = np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))
    flat, shape = npy_view(_npy(array))
    assert shape == (2, 3)
    assert flat.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "too short", id="empty"),
        pytest.param(b"NOTNUMPY" + b"\0" * 20, "magic", id="bad-magic"),
        pytest.param(_npy(np.zeros(4, np.float32))[:-4], "payload holds", id="truncated"),
        pytest.param(_npy(np.zeros(4, np.float32)) + b"\0", "payload holds", id="too-long"),
        pytest.param(b"\x93NUMPY\x03\x00" + b"\0" * 10, "version", id="version-3"),
        pytest.param(
            _header("{'descr': '|O', 'fortran_order': False, 'shape': (1,)}"),
            "plain numeric",
            id="object-dtype",
        ),
        pytest.param(
            _header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}"),
            "invalid shape",
            id="negative-shape",
        ),
        pytest.param(_header("{'descr': '<f4', 'shape': (1,)}"), "exactly", id="missing-field"),
        pytest.param(b"\x93NUMPY\x01\x00\x10\x00__import__('os')", "header", id="code-in-header"),
        pytest.param(
            _header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}"),
            "plain numeric",
            id="structured-dtype",
        ),
        pytest.param(
            _header("{'descr': ('<f4', (2,)), 'fortran_order': False, 'shape': (1,)}"),
            "plain numeric",
            id="subarray-dtype",
        ),
        pytest.param(
            _header("{'descr': '<f4', 'fortran_order': False, 'shape': (True,)}"),
            "invalid shape",
            id="bool-shape",
        ),
        pytest.param(
            _header("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}"),
            "fortran_order",
            id="fortran-not-bool",
        ),
        pytest.param(_header("{'descr': ("), "header", id="unterminated-literal"),
        # np.dtype(",f4") raises SyntaxError, which no caller catches.
        pytest.param(
            _header("{'descr': ',f4', 'fortran_order': False, 'shape': (1,)}"),
            "header",
            id="comma-descr",
        ),
        # Python's parser raises RecursionError, and MemoryError deeper: no caller catches them.
        pytest.param(_header("{" + "-" * 5000 + "1}"), "header", id="deeply-nested"),
        pytest.param(_header("{" + "-" * 9900 + "1}"), "header", id="parser-stack-overflow"),
        pytest.param(
            _header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}" + " " * 20_000),
            "large",
            id="oversized-header",
        ),
    ],
)
def test_npy_view_rejects_malformed_payloads(data: bytes, message: str) -> None:
    with pytest.raises(ArrayFormatError, match=message):
        npy_view(data)


def test_decode_array_rejects_metadata_that_contradicts_the_payload() -> None:
    # Prepare: an Array that claims float32[2] but carries float64[2]
    honest = Array(np.zeros(2, dtype=np.float64))
    liar = Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=honest.data)
    # Execute / Assert
    with pytest.raises(ArrayFormatError, match="declared float32"):
        decode_array(liar)


def test_squared_update_norms_hand_computed() -> None:
    # Prepare: global g = [1, 1, 1] and bias [0]; updates x - g are [3, 4, 0]+[0] and [0, 0, 0]+[2]
    spec = ModelSpec.from_arrayrecord(
        ArrayRecord({"w": Array(np.ones(3, np.float32)), "b": Array(np.zeros(1, np.float32))})
    )
    updates = [
        {"w": np.array([4, 5, 1], np.float32), "b": np.array([0], np.float32)},
        {"w": np.array([1, 1, 1], np.float32), "b": np.array([2], np.float32)},
    ]
    # Execute
    squared = squared_update_norms(updates, spec, chunk=2)
    # Assert: 9 + 16 = 25 and 4
    assert squared.tolist() == [25.0, 4.0]


def test_squared_update_norms_flag_nan_and_inf_as_non_finite() -> None:
    spec = ModelSpec.from_arrayrecord(ArrayRecord({"w": Array(np.zeros(4, np.float32))}))
    updates = [
        {"w": np.array([1, np.nan, 0, 0], np.float32)},
        {"w": np.array([0, 0, np.inf, 0], np.float32)},
        {"w": np.array([0, 0, 0, 2], np.float32)},
    ]
    squared = squared_update_norms(updates, spec)
    assert not np.isfinite(squared[0]) and not np.isfinite(squared[1])
    assert squared[2] == 4.0


def test_weighted_average_hand_computed_with_integer_buffers_kept_integer() -> None:
    # Prepare: weights 1 and 3 -> factors 1/4 and 3/4
    spec = ModelSpec.from_arrayrecord(
        ArrayRecord(
            {
                "w": Array(np.zeros((2, 2), np.float32)),
                "steps": Array(np.array(0, dtype=np.int64)),
            }
        )
    )
    updates = [
        {"w": np.array([0, 4, 8, 12], np.float32), "steps": np.array([10], np.int64)},
        {"w": np.array([4, 4, 4, 4], np.float32), "steps": np.array([20], np.int64)},
    ]
    # Execute
    result = weighted_average(updates, np.array([1.0, 3.0]), spec, chunk=3)
    # Assert: w = [3, 4, 5, 6]; steps = 2.5 + 15 = 17.5 -> rounds to 18, stays int64 scalar
    assert result["w"].dtype == np.float32 and result["w"].shape == (2, 2)
    assert result["w"].ravel().tolist() == [3.0, 4.0, 5.0, 6.0]
    assert result["steps"].dtype == np.int64 and result["steps"].shape == ()
    assert int(result["steps"]) == 18


def test_weighted_average_matches_numpy_on_random_chunks() -> None:
    rng = np.random.default_rng(0)
    spec = ModelSpec.from_arrayrecord(ArrayRecord({"w": Array(np.zeros(1000, np.float32))}))
    stack = rng.standard_normal((7, 1000)).astype(np.float32)
    weights = rng.uniform(0.1, 5.0, size=7)
    result = weighted_average([{"w": row} for row in stack], weights, spec, chunk=64)
    np.testing.assert_allclose(result["w"], weights @ stack / weights.sum(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param([0.0, 0.0], id="zero-sum"),
        pytest.param([1.0, -1.0], id="negative"),
        pytest.param([1.0, np.nan], id="nan"),
        pytest.param([1.0], id="length-mismatch"),
    ],
)
def test_weighted_average_rejects_bad_weights(weights: list[float]) -> None:
    spec = ModelSpec.from_arrayrecord(ArrayRecord({"w": Array(np.zeros(2, np.float32))}))
    updates = [{"w": np.zeros(2, np.float32)}, {"w": np.ones(2, np.float32)}]
    with pytest.raises(ValueError, match="weight"):
        weighted_average(updates, np.array(weights), spec)


def test_to_arrayrecord_keeps_0d_arrays_0d() -> None:
    record = to_arrayrecord({"n": np.array(7, np.int64), "w": np.ones((2, 3), np.float32).T})
    assert (record["n"].dtype, tuple(record["n"].shape)) == ("int64", ())
    assert tuple(record["w"].shape) == (3, 2)
    assert record["n"].numpy() == 7


def test_restore_layout_casts_a_foreign_aggregate_back_to_the_sent_model() -> None:
    # Prepare: the sent model, and what Flower's FedAvg makes of it (integers as float64)
    sent = ArrayRecord(
        {
            "w": Array(np.zeros((2, 2), np.float32)),
            "n": Array(np.array(3, np.int64)),
            "m": Array(np.array([5, 5], np.uint8)),
            "f": Array(np.array([True, False])),
        }
    )
    spec = ModelSpec.from_arrayrecord(sent)
    returned = ArrayRecord(
        {
            "w": Array(np.ones((2, 2), np.float32)),
            "n": Array(np.array(4.5)),
            "m": Array(np.array([np.nan, 300.0])),
            "f": Array(np.array([0.75, 0.5])),
        }
    )
    # Execute
    restored, problems = restore_layout(returned, spec)
    # Assert: dtypes and shapes of the sent model; half to even; NaN keeps the sent value;
    # out of range is clipped; booleans are a majority with ties to False
    assert problems == []
    assert [(a.dtype, tuple(a.shape)) for a in restored.values()] == [
        (a.dtype, tuple(a.shape)) for a in sent.values()
    ]
    assert restored["w"] == returned["w"]
    assert restored["n"].numpy() == 4
    assert restored["m"].numpy().tolist() == [5, 255]
    assert restored["f"].numpy().tolist() == [True, False]


def test_restore_layout_returns_a_matching_record_unchanged_and_names_what_it_cannot_fix() -> None:
    sent = ArrayRecord({"w": Array(np.zeros(3, np.float32)), "n": Array(np.array(1, np.int64))})
    spec = ModelSpec.from_arrayrecord(sent)
    assert restore_layout(sent, spec) == (sent, [])
    wrong_size = ArrayRecord({"w": Array(np.zeros(4, np.float32)), "n": Array(np.array(1.0))})
    restored, problems = restore_layout(wrong_size, spec)
    assert problems == ["array 'w' has 4 values, the sent model 3"]
    assert restored["n"].dtype == "int64"
    _, problems = restore_layout(ArrayRecord({"w": Array(np.zeros(3, np.float32))}), spec)
    assert problems == ["array keys differ from the sent model: missing ['n'], extra []"]
