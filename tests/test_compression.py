"""Update codecs: what they keep, what they refuse, and their wire records."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.compression import (
    COMPRESSED,
    Compression,
    Float16,
    Qsgd,
    TopK,
    decode_update,
    encode_update,
)

CODECS = [Float16(), Qsgd(8), Qsgd(4), Qsgd(8, chunk_size=7), TopK(0.05), TopK(0.05, 8)]


def vector(size: int = 1001, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=size).astype(np.float32)


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_a_payload_decodes_to_the_vector_within_the_codec_error(codec):
    v = vector()
    data = codec.encode(v, np.random.default_rng(1))
    back = codec.decode(data, v.size)
    assert back.shape == v.shape and back.dtype == np.float32
    if isinstance(codec, Float16):
        assert np.abs(back - v).max() < 2e-3 * np.abs(v).max()
        assert len(data) == 5 + 2 * v.size
    elif isinstance(codec, Qsgd):
        step = np.abs(v).max() / codec.levels  # one quantisation step of the largest chunk
        assert np.abs(back - v).max() <= step * (1 + 1e-5)
    else:
        k = codec.count(v.size)
        largest = np.sort(np.argsort(-np.abs(v))[:k])
        assert np.flatnonzero(back).tolist() == largest.tolist()
        tolerance = 2e-3 if codec.value_bits == 16 else 1 / 127
        assert np.abs(back[largest] - v[largest]).max() <= tolerance * np.abs(v).max()


def test_stochastic_quantisation_is_unbiased():
    v = vector(64)
    mean = np.mean(
        [Qsgd(4).decode(Qsgd(4).encode(v, np.random.default_rng(s)), v.size) for s in range(4000)],
        axis=0,
    )
    step = np.abs(v).max() / Qsgd(4).levels
    assert np.abs(mean - v).max() < 0.05 * step * 4  # 4000 draws: within a fifth of a step


def test_topk_positions_far_apart_take_several_varint_bytes():
    v = np.zeros(100_000, dtype=np.float32)
    v[[3, 90_000, 99_999]] = [1.0, -2.0, 3.0]
    codec = TopK(fraction=3 / 100_000)
    back = codec.decode(codec.encode(v, np.random.default_rng(0)), v.size)
    assert np.flatnonzero(back).tolist() == [3, 90_000, 99_999]
    np.testing.assert_array_equal(back[[3, 90_000, 99_999]], [1.0, -2.0, 3.0])


def payloads(codec, size: int = 40) -> bytes:
    return codec.encode(vector(size), np.random.default_rng(0))


@pytest.mark.parametrize(
    ("codec", "corrupt", "message"),
    [
        (Float16(), lambda d: d[:-1], "bytes for 40 values"),
        (Float16(), lambda d: d[:5] + np.float16(np.nan).tobytes() + d[7:], "non-finite"),
        (Float16(), lambda d: struct.pack("<BI", 2, 40) + d[5:], "codec 2, expected 1"),
        (Float16(), lambda d: struct.pack("<BI", 1, 41) + d[5:], "41 values, the model has 40"),
        (Qsgd(8), lambda d: d[:5] + np.float32(np.nan).tobytes() + d[9:], "non-finite"),
        (Qsgd(8), lambda d: d[:5] + np.float32(-1).tobytes() + d[9:], "negative scale"),
        (Qsgd(8), lambda d: d + b"\0", "bytes"),
        (Qsgd(8), lambda d: d[:9] + bytes([0x80]) + d[10:], "beyond"),  # -128 is not a level
        (Qsgd(4), lambda d: d[:9] + bytes([0xFF]) + d[10:], "beyond"),  # nibble 15 > 14
        (TopK(0.1), lambda d: d[:5] + struct.pack("<I", 5) + d[9:], "sends 5 values"),
        (TopK(0.1), lambda d: d[:9] + bytes([40]) + d[10:], "index"),  # first index 40 >= 40
        (TopK(0.1), lambda d: d[:9] + bytes([0x80] * 6) + d[15:], "more than 5 bytes"),
        (TopK(0.1), lambda d: d[:12], "ends inside its indices"),
        (TopK(0.1, 8), lambda d: d[:-8] + np.float32(np.inf).tobytes() + d[-4:], "scale"),
        (Float16(), lambda d: b"\1", "shorter than its header"),
    ],
)
def test_a_malformed_payload_is_refused_with_a_reason(codec, corrupt, message):
    with pytest.raises(ValueError, match=message):
        codec.decode(corrupt(payloads(codec)), 40)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), which=st.integers(0, len(CODECS) - 1))
def test_no_bytes_a_device_sends_raise_anything_but_a_value_error(data, which):
    codec = CODECS[which]
    for payload in (data, payloads(codec)[:5] + data):
        try:
            decoded = codec.decode(payload, 40)
        except ValueError:
            continue
        assert decoded.shape == (40,) and np.isfinite(decoded).all()


def model_arrays(seed: int = 0) -> ArrayRecord:
    """A BatchNorm model's state: float weights and an int64 0-d counter."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
    return ArrayRecord(model.state_dict())


def trained(received: ArrayRecord, seed: int = 1) -> RecordDict:
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, array in received.items():
        value = array.numpy()
        if value.dtype.kind == "f":
            value = value + rng.normal(scale=0.1, size=value.shape).astype(value.dtype)
        else:
            value = value + 3
        arrays[key] = Array(np.asarray(value))
    return RecordDict(
        {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 10})}
    )


@pytest.mark.parametrize("codec", [Float16(), Qsgd(8), TopK(0.5)], ids=repr)
def test_an_update_travels_compressed_and_decodes_with_every_shape_and_dtype(codec):
    received = model_arrays()
    content = trained(received)
    setting = Compression("c", codec)
    encoded, residual = encode_update(content, received, setting, None, np.random.default_rng(0))
    assert residual is None
    assert set(encoded.keys()) == {"metrics", "arrays", COMPRESSED}
    assert list(encoded["arrays"].keys()) == ["1.num_batches_tracked"]  # the int buffer, raw

    decoded = decode_update(encoded, received, setting)

    assert list(decoded["arrays"].keys()) == list(received.keys())
    assert COMPRESSED not in decoded and decoded["metrics"]["num-examples"] == 10
    for key in received:
        got, sent = decoded["arrays"][key].numpy(), content["arrays"][key].numpy()
        assert got.shape == sent.shape and got.dtype == sent.dtype
    assert decoded["arrays"]["1.num_batches_tracked"].numpy() == 3


def test_a_payload_for_another_model_or_codec_is_refused():
    received = model_arrays()
    setting = Compression("float16", Float16())
    encoded, _ = encode_update(trained(received), received, setting, None, np.random.default_rng(0))
    bigger = ArrayRecord(
        {**{k: received[k] for k in received}, "extra": Array(np.zeros(3, np.float32))}
    )
    with pytest.raises(ValueError, match="values, the model has"):
        decode_update(encoded, bigger, setting)
    with pytest.raises(ValueError, match="expected 'topk'"):
        decode_update(encoded, received, Compression("topk", TopK()))
    renamed = RecordDict({k: v for k, v in encoded.items()})
    renamed[COMPRESSED] = ConfigRecord({"codec": "float16", "data": "text"})
    with pytest.raises(ValueError, match="no bytes"):
        decode_update(renamed, received, setting)
    wrong_dtype = RecordDict({k: v for k, v in encoded.items()})
    wrong_dtype["arrays"] = ArrayRecord(
        {"1.num_batches_tracked": Array(np.zeros((), dtype=np.float32))}
    )
    with pytest.raises(ValueError, match="num_batches_tracked"):
        decode_update(wrong_dtype, received, setting)


def test_a_non_finite_update_is_left_uncompressed_and_passes_decoding_as_it_is():
    received = model_arrays()
    content = trained(received)
    weights = content["arrays"]["0.weight"].numpy().copy()
    weights[0, 0] = np.nan
    content["arrays"]["0.weight"] = Array(weights)
    setting = Compression("topk", TopK(0.5), error_feedback=True)
    residual = np.ones(1, dtype=np.float32)
    encoded, kept = encode_update(content, received, setting, residual, np.random.default_rng(0))
    assert encoded is content and kept is residual
    assert decode_update(encoded, received, setting) is content


def test_error_feedback_sends_later_what_it_leaves_out():
    """Over rounds, what was decoded plus the kept residual is exactly what was meant."""
    setting = Compression("topk", TopK(0.1), error_feedback=True)
    received = ArrayRecord({"w": Array(np.zeros(50, dtype=np.float32))})
    residual, sent_total, meant_total = None, np.zeros(50), np.zeros(50)
    for round_number in range(5):
        update = vector(50, seed=round_number)
        content = RecordDict({"arrays": ArrayRecord({"w": Array(update)})})
        encoded, residual = encode_update(
            content, received, setting, residual, np.random.default_rng(round_number)
        )
        sent_total += decode_update(encoded, received, setting)["arrays"]["w"].numpy()
        meant_total += update
    assert residual is not None
    np.testing.assert_allclose(sent_total + residual, meant_total, atol=1e-5)
    assert np.abs(residual).sum() < np.abs(meant_total).sum()


def test_a_compressed_model_decodes_with_its_layout_and_raw_integer_buffers():
    from clients.compression import COMPRESSED_MODEL, decode_model, encode_model

    model = model_arrays()
    content = RecordDict({"arrays": model, "config": ConfigRecord({"server-round": 1})})
    setting = Compression("float16", Float16())
    encoded = encode_model(content, setting, np.random.default_rng(0))
    assert COMPRESSED_MODEL in encoded and list(encoded["arrays"].keys()) == [
        "1.num_batches_tracked"
    ]
    decoded = decode_model(encoded, setting)
    assert set(decoded["arrays"].keys()) == set(model.keys())
    for key in model:
        got, sent = decoded["arrays"][key].numpy(), model[key].numpy()
        assert got.shape == sent.shape and got.dtype == sent.dtype
        np.testing.assert_allclose(got, sent, atol=2e-3)
    assert decoded["config"]["server-round"] == 1
    with pytest.raises(ValueError, match="not compressed with 'qsgd8'"):
        decode_model(encoded, Compression("qsgd8", Qsgd(8)))
