"""Property tests: reply order, equality with Flower's FedAvg, and garbage that must not crash."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies import AnomalyRejection, ReliabilityWeightedFedAvg
from tests.test_strategies_support import (
    configure,
    numpy_arrays,
    reply,
    task_identity,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.usefixtures("task_identity")

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
GLOBAL = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(3, np.float32)}


def _trusted(n: int) -> AnomalyRejection:
    return AnomalyRejection(ReliabilityWeightedFedAvg(min_available_nodes=n, min_train_nodes=n))


@st.composite
def fleets(
    draw: st.DrawFn, min_n: int = 3, max_n: int = 14, noises: tuple[float, ...] = (0.01, 0.3, 1.0)
) -> tuple[list[Message], int]:
    """Honest-looking replies: a shared direction, per-device noise, scale and count."""
    n = draw(st.integers(min_n, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    noise = draw(st.sampled_from(noises))
    rng = np.random.default_rng(seed)
    direction = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in GLOBAL.items()}
    replies = []
    for i in range(n):
        scale = rng.uniform(1.0, 1.3)
        model = {
            k: (scale * (d + noise * rng.standard_normal(d.shape))).astype(np.float32)
            for k, d in direction.items()
        }
        replies.append(
            reply(
                500 + i,
                model,
                int(rng.integers(10, 31)),
                device=i,
                metrics={"acc": float(rng.uniform())},
            )
        )
    return replies, seed


@SETTINGS
@given(fleet=fleets(), permutation_seed=st.integers(0, 1000))
def test_result_and_report_do_not_depend_on_reply_order(
    fleet: tuple[list[Message], int], permutation_seed: int
) -> None:
    # Prepare
    replies, _ = fleet
    n = len(replies)
    shuffled = [replies[i] for i in np.random.default_rng(permutation_seed).permutation(n)]
    results = []
    for order in (replies, shuffled):
        strategy = _trusted(n)
        configure(strategy, 1, GLOBAL, [500 + i for i in range(n)])
        # Execute
        arrays, metrics = strategy.aggregate_train(1, order)
        results.append((arrays, metrics, strategy.round_report(1)))
    # Assert: bit-identical arrays, metrics and reports
    (a1, m1, r1), (a2, m2, r2) = results
    assert a1 is not None and a2 is not None
    for key in GLOBAL:
        assert np.array_equal(numpy_arrays(a1)[key], numpy_arrays(a2)[key])
    assert m1 == m2
    assert r1 == r2


@SETTINGS
@given(fleet=fleets(max_n=9, noises=(0.0, 0.01, 0.05)))
def test_equals_flowers_fedavg_when_everyone_is_honest(fleet: tuple[list[Message], int]) -> None:
    # Prepare: counts in [10, 30] (the 3× median cap never binds), scales in [1, 1.3] (norm z at
    # most log(1.3)/0.1 = 2.6 < 4) and one direction up to small noise: nothing is rejected,
    # quality and reliability are equal, so weights are ∝ counts exactly as in FedAvg.
    replies, _ = fleet
    n = len(replies)
    expected_arrays, expected_metrics = FedAvg().aggregate_train(1, replies)
    for strategy in (
        ReliabilityWeightedFedAvg(min_available_nodes=n, min_train_nodes=n),
        _trusted(n),
    ):
        configure(strategy, 1, GLOBAL, [500 + i for i in range(n)])
        # Execute
        arrays, metrics = strategy.aggregate_train(1, replies)
        report = strategy.round_report(1)  # type: ignore[attr-defined]
        # Assert
        assert report.rejected == {}
        assert {e.quality for e in report.devices.values()} == {1.0}
        assert arrays is not None and expected_arrays is not None
        for key in GLOBAL:
            np.testing.assert_allclose(
                numpy_arrays(arrays)[key], numpy_arrays(expected_arrays)[key], rtol=1e-5, atol=1e-6
            )
        assert metrics is not None and expected_metrics is not None
        assert set(metrics) == set(expected_metrics) == {"train-loss", "acc"}
        for key in metrics:
            assert metrics[key] == pytest.approx(expected_metrics[key], rel=1e-9)


# -- garbage ---------------------------------------------------------------------------------

DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_, np.complex64]
SPECIAL = [np.nan, np.inf, -np.inf, 1e38, -1e38, 0.0]


@st.composite
def garbage_reply(draw: st.DrawFn, node: int) -> Message:
    kind = draw(
        st.sampled_from(
            [
                "valid",
                "error",
                "empty",
                "random-keys",
                "dtype",
                "shape",
                "special",
                "count",
                "extra-record",
                "device",
            ]
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    model = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in GLOBAL.items()}
    count: object = int(rng.integers(1, 100))
    if kind == "error":
        return reply(node, error=draw(st.text(max_size=20)))
    if kind == "empty":
        return reply(node, records={})
    if kind == "random-keys":
        keys = draw(st.lists(st.text(min_size=1, max_size=5), min_size=0, max_size=3, unique=True))
        model = {k: rng.standard_normal(2).astype(np.float32) for k in keys}
    if kind == "dtype":
        key = draw(st.sampled_from(list(GLOBAL)))
        model[key] = model[key].astype(draw(st.sampled_from(DTYPES)))
    if kind == "shape":
        key = draw(st.sampled_from(list(GLOBAL)))
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
        model[key] = rng.standard_normal(shape).astype(np.float32)
    if kind == "special":
        key = draw(st.sampled_from(list(GLOBAL)))
        flat = model[key].ravel()
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(SPECIAL))
    if kind == "count":
        count = draw(
            st.one_of(
                st.integers(-(10**6), 0),
                st.sampled_from([float("nan"), float("inf"), -1.5, 0.0, 10**12]),
                st.lists(st.floats(allow_nan=False), max_size=3),
                st.none(),
            )
        )
    if kind == "extra-record":
        records = {
            "arrays": ArrayRecord({k: Array(v) for k, v in model.items()}),
            "metrics": MetricRecord({"num-examples": 5}),
            draw(st.sampled_from(["arrays2", "metrics2", "cfg"])): draw(
                st.sampled_from([ArrayRecord(), MetricRecord({"x": 1.0}), ConfigRecord({"a": "b"})])
            ),
        }
        return reply(node, records=records)
    if kind == "device":
        value = draw(st.one_of(st.integers(-5, 5), st.text(max_size=3), st.booleans()))
        return reply(
            node,
            records={
                "arrays": ArrayRecord({k: Array(v) for k, v in model.items()}),
                "metrics": MetricRecord({"num-examples": 5}),
                "device": ConfigRecord({"device-id": value}),
            },
        )
    return reply(node, model, count, metrics={"acc": float(rng.uniform())})


@st.composite
def garbage_rounds(draw: st.DrawFn) -> list[Message]:
    n = draw(st.integers(1, 10))
    return [draw(garbage_reply(500 + i)) for i in range(n)]


@settings(SETTINGS, max_examples=int(os.environ.get("FL_IOT_GARBAGE_EXAMPLES", "60")))
@given(replies=garbage_rounds(), wrapped=st.booleans(), configured=st.booleans())
def test_garbage_never_crashes_and_never_leaks_into_the_model(
    replies: list[Message], wrapped: bool, configured: bool
) -> None:
    # Prepare
    n = len(replies)
    inner = ReliabilityWeightedFedAvg(min_available_nodes=n, min_train_nodes=n)
    strategy = AnomalyRejection(inner) if wrapped else inner
    if configured:
        configure(strategy, 1, GLOBAL, [500 + i for i in range(n)])
    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies)
    report = strategy.round_report(1)
    # Assert: None, or finite arrays of the global model's layout
    if arrays is not None:
        result = numpy_arrays(arrays)
        if configured:
            assert list(result) == list(GLOBAL)
            for key, value in GLOBAL.items():
                assert result[key].shape == value.shape and result[key].dtype == value.dtype
        assert all(np.isfinite(v).all() for v in result.values())
        assert metrics is not None
    else:
        assert report.num_accepted == 0
    json.dumps(report.to_dict(), allow_nan=False)
    # Every reply is accounted for: accepted or rejected with a reason
    assert report.num_replies == n
    assert report.num_accepted + len(report.rejected) <= n
    assert all(isinstance(reason, str) and reason for reason in report.rejected.values())
