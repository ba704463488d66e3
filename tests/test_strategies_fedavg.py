"""ReliabilityWeightedFedAvg: hand-computed weights, history, malformed replies, report, state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg

from strategies import DEVICE_KEYS, ReliabilityTracker, ReliabilityWeightedFedAvg
from tests.test_strategies_support import (
    arrayrecord,
    configure,
    numpy_arrays,
    reply,
    task_identity,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.usefixtures("task_identity")

GLOBAL = {"w": np.zeros(2, np.float32)}
V = np.array([1.0, 2.0], np.float32)


def test_weights_are_bounded_quantity_times_quality_times_reliability() -> None:
    # Prepare: three devices update along the same direction (quality 1, new devices: same
    # reliability 0.5). Counts 10, 20, 90: median 20, cap 3 -> 90 is bounded to 60.
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=3, quantity_cap=3.0)
    configure(strategy, 1, GLOBAL, [10, 11, 12])
    replies = [
        reply(10, {"w": 1 * V}, 10, metrics={"train-loss": 0.9}),
        reply(11, {"w": 2 * V}, 20, metrics={"train-loss": 0.6}),
        reply(12, {"w": 3 * V}, 90, metrics={"train-loss": 0.3}),
    ]
    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies)
    report = strategy.round_report(1)
    # Assert: weights 10 : 20 : 60 -> (1·V + 2·2V + 6·3V)/9 = 23/9 · V
    assert arrays is not None and metrics is not None
    np.testing.assert_allclose(numpy_arrays(arrays)["w"], 23 / 9 * V, rtol=1e-6)
    assert metrics["train-loss"] == pytest.approx((0.9 * 1 + 0.6 * 2 + 0.3 * 6) / 9)
    assert "num-examples" not in metrics  # the weight key is excluded, as in Flower's FedAvg
    devices = report.devices
    assert [devices[d].quantity for d in ("10", "11", "12")] == [10.0, 20.0, 60.0]
    assert [devices[d].quality for d in ("10", "11", "12")] == [1.0, 1.0, 1.0]
    assert [devices[d].reliability for d in ("10", "11", "12")] == [0.5, 0.5, 0.5]
    assert [devices[d].weight for d in ("10", "11", "12")] == pytest.approx([1 / 9, 2 / 9, 6 / 9])
    assert devices["12"].num_examples == 90.0


def test_quality_follows_the_devices_mean_direction_over_rounds() -> None:
    # Prepare: 12 devices update along one direction with noise; device 0 reverses its update in
    # rounds 1-3 and sends an honest update in round 4
    rng = np.random.default_rng(0)
    common = rng.standard_normal(64).astype(np.float32)
    model = {"w": np.zeros(64, np.float32)}
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=12, clip_ratio=None)
    nodes = list(range(100, 112))
    strategy.set_roster({node: str(i) for i, node in enumerate(nodes)})
    # Execute
    for server_round in range(1, 5):
        configure(strategy, server_round, model, nodes)
        replies = []
        for i, node in enumerate(nodes):
            update = common + 0.7 * rng.standard_normal(64).astype(np.float32)
            if i == 0 and server_round <= 3:
                update = -update
            replies.append(reply(node, {"w": update}, 10, device=i))
        strategy.aggregate_train(server_round, replies)
    # Assert: reversed rounds cost device 0 quality at once, and its honest round 4 does not
    # restore it: the mean of its rounds is still far below the others'
    first, last = strategy.round_report(1).devices, strategy.round_report(4).devices
    assert first["0"].quality < 1.0 and first["0"].mean_direction_z < -1.5
    assert last["0"].mean_direction_z < -1.5 and last["0"].quality < 0.7
    honest = [last[str(i)].quality for i in range(1, 12)]
    assert min(honest) == 1.0, honest


def test_updates_above_clip_ratio_times_the_median_norm_are_shrunk_towards_the_model() -> None:
    # Prepare: global g = (1, 1); updates V, 2V and 30V with equal weights. Median norm is
    # |2V|; ratio 3 -> bound |6V|, so 30V is shrunk by 6/30 = 0.2 to 6V.
    g = {"w": np.ones(2, np.float32)}
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=3, clip_ratio=3.0)
    configure(strategy, 1, g, [10, 11, 12])
    replies = [reply(10 + i, {"w": g["w"] + k * V}, 20) for i, k in enumerate((1, 2, 30))]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    devices = strategy.round_report(1).devices
    # Assert: g + (V + 2V + 6V)/3 = g + 3V; shares stay 1/3 each, the clip factor is reported
    assert arrays is not None
    np.testing.assert_allclose(numpy_arrays(arrays)["w"], g["w"] + 3 * V, rtol=1e-6)
    assert [devices[d].norm_clip for d in ("10", "11", "12")] == pytest.approx([1, 1, 0.2])
    assert [devices[d].weight for d in ("10", "11", "12")] == pytest.approx([1 / 3] * 3)
    # Without a bound, the same round is plain weighted averaging: g + 11V
    plain = ReliabilityWeightedFedAvg(min_available_nodes=3, clip_ratio=None)
    configure(plain, 1, g, [10, 11, 12])
    arrays, _ = plain.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(numpy_arrays(arrays)["w"], g["w"] + 11 * V, rtol=1e-6)


def test_under_central_dp_shares_are_capped_and_round_dependent_factors_are_off() -> None:
    # Prepare: what CentralDP sets, a share cap of 0.4. Counts 10, 10, 100 (cap 3 -> 30) give
    # raw shares 0.2, 0.2, 0.6; the third is capped at 0.4 and its excess goes to the others.
    # Its update 30V would be shrunk by the median-norm bound, which depends on the other
    # devices' updates and is therefore off (the DP wrapper has clipped every update already).
    g = {"w": np.ones(2, np.float32)}
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=3, clip_ratio=3.0)
    strategy.max_weight_share = 0.4
    configure(strategy, 1, g, [10, 11, 12])
    replies = [
        reply(10 + i, {"w": g["w"] + k * V}, n)
        for i, (k, n) in enumerate(((1, 10), (2, 10), (30, 100)))
    ]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    devices = strategy.round_report(1).devices
    # Assert: g + 0.3·V + 0.3·2V + 0.4·30V = g + 12.9V
    assert arrays is not None
    np.testing.assert_allclose(numpy_arrays(arrays)["w"], g["w"] + 12.9 * V, rtol=1e-6)
    assert [devices[d].weight for d in ("10", "11", "12")] == pytest.approx([0.3, 0.3, 0.4])
    assert [devices[d].norm_clip for d in ("10", "11", "12")] == [1.0, 1.0, 1.0]
    assert [devices[d].quality for d in ("10", "11", "12")] == [1.0, 1.0, 1.0]


def test_failures_and_lateness_lower_the_next_rounds_weight() -> None:
    # Prepare: round 1 configures four nodes; 10 and 11 complete, 12 fails, 13 never answers
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=4)
    configure(strategy, 1, GLOBAL, [10, 11, 12, 13])
    strategy.aggregate_train(
        1, [reply(10, {"w": V}, 10), reply(11, {"w": V}, 10), reply(12, error="out of battery")]
    )
    round_1 = strategy.round_report(1)
    # Execute: round 2, everyone replies the same update and count
    configure(strategy, 2, GLOBAL, [10, 11, 12, 13])
    strategy.aggregate_train(2, [reply(node, {"w": V}, 10) for node in (10, 11, 12, 13)])
    round_2 = strategy.round_report(2)
    # Assert: round 1 saw the failure and the silence
    assert round_1.rejected == {"12": "error reply: out of battery"}
    assert round_1.late == ["13"]
    assert round_1.devices["12"].status == "failed"
    # reliability: completed (1+1)/(2+1), failed 1/(2+1), late 1/(2+0.5)
    rel = {d: round_2.devices[d].reliability for d in ("10", "11", "12", "13")}
    assert rel == pytest.approx({"10": 2 / 3, "11": 2 / 3, "12": 1 / 3, "13": 0.4})
    total = 2 / 3 + 2 / 3 + 1 / 3 + 0.4
    assert round_2.devices["12"].weight == pytest.approx((1 / 3) / total)


def test_error_replies_are_charged_to_the_device_the_roster_puts_on_that_node() -> None:
    # Prepare: node 10 is device 7 (fl-iot's roll call)
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=1, min_train_nodes=1)
    strategy.set_roster({10: "7"})
    configure(strategy, 1, GLOBAL, [10])
    # Execute: the node fails in round 1, before any reply of it was seen
    arrays, _ = strategy.aggregate_train(1, [reply(10, error="timeout")])
    # Assert: nothing to aggregate, and the failure is booked on device 7, not node 10
    assert arrays is None
    assert strategy.round_report(1).rejected == {"7": "error reply: timeout"}
    assert strategy.tracker.history("7", 2)["failed"] == 1.0


def honest() -> list:
    """Three honest replies from nodes 20-22 (built per test: Messages need TaskIdentity)."""
    return [reply(20 + i, {"w": (1.0 + 0.1 * i) * V}, 10 + i) for i in range(3)]


def _bad(kind: str) -> object:
    """One malformed train reply from node 99, by kind."""
    ok_metrics = MetricRecord({"num-examples": 10, "train-loss": 0.1})
    if kind == "nan":
        return reply(99, {"w": np.array([np.nan, 1], np.float32)})
    if kind == "inf":
        return reply(99, {"w": np.array([np.inf, 1], np.float32)})
    if kind == "absurd-norm":
        return reply(99, {"w": np.array([3e38, 3e38], np.float32)})
    if kind == "wrong-shape":
        return reply(99, {"w": np.zeros(3, np.float32)})
    if kind == "wrong-dtype":
        return reply(99, {"w": np.zeros(2, np.float64)})
    if kind == "missing-key":
        return reply(99, {"v": np.zeros(2, np.float32)})
    if kind == "extra-key":
        return reply(99, {"w": np.zeros(2, np.float32), "x": np.zeros(1, np.float32)})
    if kind == "missing-count":
        return reply(99, {"w": V}, None)
    if kind == "list-count":
        return reply(99, {"w": V}, [1, 2])
    if kind in ("negative-count", "zero-count", "nan-count", "inf-count"):
        value = {"negative-count": -5, "zero-count": 0, "nan-count": np.nan, "inf-count": np.inf}
        return reply(99, {"w": V}, value[kind])
    if kind == "no-arrays":
        return reply(99, None)
    if kind == "two-arrayrecords":
        return reply(
            99, records={"a": arrayrecord({"w": V}), "b": arrayrecord({"w": V}), "m": ok_metrics}
        )
    if kind == "two-metricrecords":
        return reply(99, records={"a": arrayrecord({"w": V}), "m": ok_metrics, "n": ok_metrics})
    if kind == "empty":
        return reply(99, records={})
    if kind == "lying-array":
        liar = Array(
            dtype="float32", shape=(2,), stype="numpy.ndarray", data=Array(np.zeros(2)).data
        )
        return reply(99, records={"a": ArrayRecord({"w": liar}), "m": ok_metrics})
    if kind == "torch-stype":
        odd = Array(dtype="float32", shape=(2,), stype="torch.Tensor", data=b"\0" * 8)
        return reply(99, records={"a": ArrayRecord({"w": odd}), "m": ok_metrics})
    if kind == "bad-device-id":
        return reply(
            99,
            records={
                "a": arrayrecord({"w": V}),
                "m": ok_metrics,
                "device": ConfigRecord({"device-id": "seven"}),
            },
        )
    if kind == "error":
        return reply(99, error="crashed")
    raise AssertionError(kind)


MALFORMED = {
    "nan": "NaN or Inf",
    "inf": "NaN or Inf",
    "absurd-norm": "overflows",
    "wrong-shape": "the global model has float32[2]",
    "wrong-dtype": "the global model has float32[2]",
    "missing-key": "missing ['w']",
    "extra-key": "extra ['x']",
    "missing-count": "'num-examples' is missing",
    "list-count": "must be a number",
    "negative-count": "positive and finite",
    "zero-count": "positive and finite",
    "nan-count": "positive and finite",
    "inf-count": "positive and finite",
    "no-arrays": "exactly one ArrayRecord, found 0",
    "two-arrayrecords": "exactly one ArrayRecord, found 2",
    "two-metricrecords": "exactly one MetricRecord, found 2",
    "empty": "exactly one ArrayRecord",
    "lying-array": "declared float32",
    "torch-stype": "serialization type",
    "bad-device-id": "'device-id' must be an int",
    "error": "error reply: crashed",
}


@pytest.mark.parametrize(("kind", "reason"), MALFORMED.items(), ids=list(MALFORMED))
def test_malformed_reply_is_rejected_with_its_reason_and_the_rest_aggregated(
    kind: str, reason: str
) -> None:
    # Prepare: every node is the device of its own number (the roster checks device claims)
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=4)
    strategy.set_roster({node: str(node) for node in (20, 21, 22, 99)})
    configure(strategy, 1, GLOBAL, [20, 21, 22, 99])
    reference = ReliabilityWeightedFedAvg(min_available_nodes=3)
    configure(reference, 1, GLOBAL, [20, 21, 22])
    expected, _ = reference.aggregate_train(1, honest())
    # Execute
    arrays, _ = strategy.aggregate_train(1, [*honest(), _bad(kind)])
    report = strategy.round_report(1)
    # Assert: the bad reply is out, named with its reason; the result is the honest aggregate
    assert list(report.rejected) == ["99"]
    assert reason in report.rejected["99"]
    assert arrays is not None and expected is not None
    np.testing.assert_allclose(numpy_arrays(arrays)["w"], numpy_arrays(expected)["w"])
    json.dumps(report.to_dict(), allow_nan=False)


def test_flowers_fedavg_would_have_crashed_on_the_same_reply() -> None:
    # The reason this module exists: one reply without num-examples ends a FedAvg run.
    with pytest.raises(InconsistentMessageReplies):
        FedAvg().aggregate_train(1, [*honest(), _bad("missing-count")])


def test_two_replies_for_one_device_in_a_round_are_both_rejected() -> None:
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=2)
    configure(strategy, 1, GLOBAL, [1, 2])
    replies = [reply(1, {"w": V}, 10), reply(1, {"w": 2 * V}, 10), reply(2, {"w": V}, 10)]
    strategy.aggregate_train(1, replies)
    report = strategy.round_report(1)
    assert report.rejected == {"1": "2 replies for this device"}
    assert report.num_accepted == 1


def test_report_contract() -> None:
    # Prepare
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=4)
    configure(strategy, 3, GLOBAL, [20, 21, 22, 99])
    strategy.aggregate_train(3, [*honest(), _bad("nan")])
    # Execute
    report = strategy.round_report(3)
    # Assert: JSON-safe, str keys, the same entry keys for every device, weights summing to 1
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False)) == report.to_dict()
    assert report.round == 3 and report.num_replies == 4 and report.num_accepted == 3
    assert set(report.devices) == {"20", "21", "22", "99"}
    assert all(tuple(e) == DEVICE_KEYS for e in report.to_dict()["devices"].values())
    accepted = [e for e in report.devices.values() if e.status == "accepted"]
    assert sum(e.weight for e in accepted) == pytest.approx(1.0)
    assert report.devices["99"].weight == 0.0
    assert set(report.rejected) == {d for d, e in report.devices.items() if e.weight == 0.0}
    assert strategy.round_report(42).devices == {}


def test_without_configure_train_the_layout_is_inferred_from_the_replies() -> None:
    strategy = ReliabilityWeightedFedAvg()
    arrays, _ = strategy.aggregate_train(1, [*honest(), _bad("wrong-shape")])
    assert arrays is not None
    assert list(strategy.round_report(1).rejected) == ["99"]


def test_aggregate_evaluate_skips_what_flower_would_choke_on() -> None:
    # Prepare: one good reply, one with an extra metric, one without the weight key, one error
    strategy = ReliabilityWeightedFedAvg()
    replies = [
        reply(1, records={"metrics": MetricRecord({"num-examples": 10, "loss": 1.0})}),
        reply(
            2, records={"metrics": MetricRecord({"num-examples": 30, "loss": 2.0, "epsilon": 3.0})}
        ),
        reply(3, records={"metrics": MetricRecord({"loss": 9.0})}),
        reply(4, error="offline"),
    ]
    # Execute
    metrics = strategy.aggregate_evaluate(1, replies)
    # Assert: (10·1 + 30·2)/40 over the common keys only
    assert metrics is not None and dict(metrics) == {"loss": pytest.approx(1.75)}


def test_state_dict_resumes_reliability() -> None:
    # Prepare
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=2)
    strategy.set_roster({10: "3", 11: "4"})
    configure(strategy, 1, GLOBAL, [10, 11])
    strategy.aggregate_train(1, [reply(10, {"w": V}, 10, device=3), reply(11, error="x")])
    # Execute
    resumed = ReliabilityWeightedFedAvg(min_available_nodes=2)
    resumed.load_state_dict(json.loads(json.dumps(strategy.state_dict())))
    # Assert
    for device in ("3", "4"):
        assert resumed.tracker.reliability(device, 2) == strategy.tracker.reliability(device, 2)
    assert resumed.tracker.reliability("3", 2) > resumed.tracker.reliability("4", 2)


def test_a_shared_tracker_is_used_as_given() -> None:
    tracker = ReliabilityTracker(prior=0.9)
    strategy = ReliabilityWeightedFedAvg(tracker=tracker)
    assert strategy.tracker is tracker


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"quantity_cap": 0.5}, "quantity_cap must be >= 1", id="cap"),
        pytest.param({"min_quality": 0.0}, r"min_quality must be in \(0, 1\]", id="min-quality"),
        pytest.param(
            {"quality_soft_z": 4, "quality_hard_z": 2}, "quality_soft_z < quality_hard_z", id="ramp"
        ),
        pytest.param({"sample_size": 8}, "sample_size must be an int >= 16", id="sample"),
        pytest.param({"max_update_norm": 0.0}, "max_update_norm must be > 0", id="norm"),
        pytest.param({"clip_ratio": 0.0}, "clip_ratio must be > 0", id="clip"),
    ],
)
def test_bad_parameters_raise(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReliabilityWeightedFedAvg(**kwargs)


def test_max_update_norm_rejects_absurdly_large_updates() -> None:
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=4, max_update_norm=100.0)
    configure(strategy, 1, GLOBAL, [20, 21, 22, 99])
    strategy.aggregate_train(1, [*honest(), reply(99, {"w": np.array([300.0, 400.0], np.float32)})])
    assert strategy.round_report(1).rejected == {
        "99": "update norm 500 exceeds max_update_norm 100"
    }


def test_replies_are_not_modified() -> None:
    # The caller (fl-iot's round loop) logs per-device metrics after aggregation.
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=3)
    configure(strategy, 1, GLOBAL, [20, 21, 22])
    replies = honest()
    before = [dict(r.content["metrics"]) for r in replies]
    strategy.aggregate_train(1, replies)
    assert [dict(r.content["metrics"]) for r in replies] == before
    assert all(set(r.content.keys()) == {"arrays", "metrics"} for r in replies)
    assert isinstance(replies[0].content, RecordDict)


def test_unsupported_dtypes_never_reach_the_average() -> None:
    # Found by hypothesis: without a global model, a majority of complex64 replies used to be
    # taken as the layout and crashed the weighted average.
    strategy = ReliabilityWeightedFedAvg()
    replies = [reply(i, {"w": np.ones(2, np.complex64)}, 10) for i in range(3)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert (arrays, metrics) == (None, None)
    assert len(strategy.round_report(1).rejected) == 3
