"""AnomalyRejection: wraps any Strategy, rejects outliers, feeds reliability, merges reports."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, FedMedian, Strategy

from strategies import (
    SIGNALS,
    AnomalyRejection,
    AnomalyThresholds,
    ReliabilityTracker,
    ReliabilityWeightedFedAvg,
)
from tests.test_strategies_support import (
    FakeGrid,
    arrayrecord,
    configure,
    numpy_arrays,
    reply,
    task_identity,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.usefixtures("task_identity")

D = 64
GLOBAL = {"w": np.zeros(D, np.float32)}
NODES = list(range(100, 110))
ROSTER = {100 + i: str(i) for i in range(13)}  # node 100 + i is device i (colluders: 110-112)


def _keyed(strategy: AnomalyRejection) -> AnomalyRejection:
    """``strategy`` with the test's roster, as fl-iot's round loop sets it from the roll call."""
    strategy.set_roster(ROSTER)
    return strategy


def _honest(seed: int = 0, n: int = 9) -> list[Message]:
    """Nine noisy updates around one direction, from nodes 100-108, devices 0-8."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(D).astype(np.float32)
    return [
        reply(
            NODES[i],
            {"w": direction + 0.3 * rng.standard_normal(D).astype(np.float32)},
            int(rng.integers(50, 100)),
            device=i,
        )
        for i in range(n)
    ]


def _boosted(seed: int = 0) -> Message:
    """Device 9 on node 109: the honest direction ×20."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(D).astype(np.float32)
    return reply(NODES[9], {"w": 20 * direction}, 75, device=9)


def test_wrapping_flowers_fedavg_rejects_the_outlier_and_averages_the_rest() -> None:
    # Prepare
    strategy = _keyed(AnomalyRejection(FedAvg(min_available_nodes=10)))
    configure(strategy, 1, GLOBAL, NODES)
    honest = _honest()
    expected, expected_metrics = FedAvg().aggregate_train(1, _honest())
    # Execute
    arrays, metrics = strategy.aggregate_train(1, [*honest, _boosted()])
    report = strategy.round_report(1)
    # Assert: exactly the booster is out, and the result is FedAvg over the honest replies
    assert list(report.rejected) == ["9"]
    assert "norm" in report.rejected["9"]
    assert arrays is not None and expected is not None
    np.testing.assert_allclose(
        numpy_arrays(arrays)["w"], numpy_arrays(expected)["w"], rtol=1e-5, atol=1e-6
    )
    assert metrics == expected_metrics
    assert report.devices["9"].status == "anomalous"
    assert report.devices["0"].weight is None  # FedAvg's own weighting is not reported


def test_metric_keys_that_differ_between_devices_do_not_crash_flowers_fedavg() -> None:
    # Prepare: one device class reports epsilon, the others do not; Flower alone would raise.
    replies = _honest()
    replies[0] = reply(
        NODES[0], {"w": np.ones(D, np.float32)}, 60, device=0, metrics={"epsilon": 2.0}
    )
    strategy = AnomalyRejection(FedAvg(min_available_nodes=9))
    configure(strategy, 1, GLOBAL, NODES[:9])
    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies)
    # Assert
    assert arrays is not None and metrics is not None
    assert set(metrics) == {"train-loss"}


def test_wrapping_median_works_too() -> None:
    strategy = _keyed(AnomalyRejection(FedMedian(min_available_nodes=10)))
    configure(strategy, 1, GLOBAL, NODES)
    arrays, _ = strategy.aggregate_train(1, [*_honest(), _boosted()])
    assert arrays is not None
    assert list(strategy.round_report(1).rejected) == ["9"]


def test_trusted_shares_the_tracker_and_feeds_rejections_into_reliability() -> None:
    # Prepare
    inner = ReliabilityWeightedFedAvg(min_available_nodes=10)
    strategy = _keyed(AnomalyRejection(inner))
    assert strategy.tracker is inner.tracker
    configure(strategy, 1, GLOBAL, NODES)
    # Execute: round 1 with the booster, round 2 all honest
    strategy.aggregate_train(1, [*_honest(), _boosted()])
    configure(strategy, 2, GLOBAL, NODES)
    strategy.aggregate_train(
        2, [*_honest(seed=1), reply(109, {"w": np.ones(D, np.float32)}, 75, device=9)]
    )
    report = strategy.round_report(2)
    # Assert: the rejection weighs 2 -> (1 + 0)/(2 + 2) = 0.25, honest devices (1 + 1 - a)/(...)
    assert report.devices["9"].reliability == pytest.approx(0.25)
    assert all(report.devices[str(i)].reliability > 0.6 for i in range(9))
    assert strategy.tracker.history("9", 2)["anomaly"] == 1.0


def test_merged_report_has_weights_from_the_inner_and_scores_from_the_wrapper() -> None:
    # Prepare
    strategy = _keyed(AnomalyRejection(ReliabilityWeightedFedAvg(min_available_nodes=10)))
    configure(strategy, 1, GLOBAL, NODES)
    # Execute: node 110 (device 10) fails
    strategy.aggregate_train(1, [*_honest(), _boosted(), reply(110, error="boom")])
    report = strategy.round_report(1)
    # Assert
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False)) == report.to_dict()
    assert report.strategy == "AnomalyRejection(ReliabilityWeightedFedAvg)"
    assert set(report.rejected) == {"9", "10"}
    assert report.late == []
    accepted = {d: e for d, e in report.devices.items() if e.status == "accepted"}
    assert set(accepted) == {str(i) for i in range(9)}
    assert sum(e.weight for e in accepted.values()) == pytest.approx(1.0)
    for entry in accepted.values():
        assert entry.quantity > 0 and entry.quality == 1.0 and entry.reliability == 0.5
        assert 0 <= entry.anomaly_score < 1
        assert set(entry.signals) == set(SIGNALS)
    assert report.devices["9"].anomaly_score >= 1 and report.devices["9"].weight == 0.0
    assert report.devices["10"].status == "failed"


def test_late_devices_are_reported_once_by_the_wrapper() -> None:
    strategy = AnomalyRejection(ReliabilityWeightedFedAvg(min_available_nodes=10))
    configure(strategy, 1, GLOBAL, NODES)
    strategy.aggregate_train(1, _honest(n=8))  # nodes 108 and 109 never answer
    report = strategy.round_report(1)
    assert report.late == ["108", "109"]
    assert report.rejected == {}
    assert strategy.tracker.history("108", 2)["late"] == 1.0


def test_the_norm_pass_runs_once_with_our_own_inner_strategy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: count the full passes over the parameters
    import strategies.validation as validation

    calls = []
    original = validation.squared_update_norms

    def counting(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(validation, "squared_update_norms", counting)
    strategy = AnomalyRejection(ReliabilityWeightedFedAvg(min_available_nodes=10))
    configure(strategy, 1, GLOBAL, NODES)
    # Execute
    strategy.aggregate_train(1, [*_honest(), _boosted()])
    # Assert
    assert len(calls) == 1


class _Exploding(FedAvg):
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        raise RuntimeError("wrapped strategy failed")


def test_a_failing_wrapped_strategy_does_not_end_the_run() -> None:
    strategy = AnomalyRejection(_Exploding(min_available_nodes=10))
    configure(strategy, 1, GLOBAL, NODES)
    assert strategy.aggregate_train(1, _honest()) == (None, None)
    assert strategy.round_report(1).error == "RuntimeError: wrapped strategy failed"


def test_too_few_replies_are_not_scored() -> None:
    strategy = AnomalyRejection(FedAvg(min_available_nodes=2))
    configure(strategy, 1, GLOBAL, NODES[:2])
    strategy.aggregate_train(1, [*_honest(n=1), _boosted()])
    assert strategy.round_report(1).rejected == {}


def test_evaluation_passes_through_and_is_hardened() -> None:
    # Prepare
    inner = FedAvg(min_available_nodes=3)
    strategy = AnomalyRejection(inner)
    # Execute
    messages = list(
        strategy.configure_evaluate(1, arrayrecord(GLOBAL), ConfigRecord(), FakeGrid(NODES[:3]))  # type: ignore[arg-type]
    )
    metrics = strategy.aggregate_evaluate(
        1,
        [
            reply(1, records={"metrics": MetricRecord({"num-examples": 10, "loss": 1.0})}),
            reply(2, records={"metrics": MetricRecord({"loss": 5.0})}),
            reply(3, error="x"),
        ],
    )
    # Assert
    assert {m.metadata.dst_node_id for m in messages} == set(NODES[:3])
    assert metrics is not None and dict(metrics) == {"loss": 1.0}


def test_state_dict_round_trips_through_json() -> None:
    strategy = _keyed(AnomalyRejection(ReliabilityWeightedFedAvg(min_available_nodes=10)))
    configure(strategy, 1, GLOBAL, NODES)
    strategy.aggregate_train(1, [*_honest(), _boosted()])
    resumed = AnomalyRejection(ReliabilityWeightedFedAvg(min_available_nodes=10))
    resumed.load_state_dict(json.loads(json.dumps(strategy.state_dict())))
    assert resumed.tracker is resumed.strategy.tracker  # type: ignore[attr-defined]
    assert resumed.tracker.reliability("9", 2) == pytest.approx(0.25)


def test_a_given_tracker_is_installed_in_the_inner_strategy() -> None:
    tracker = ReliabilityTracker(decay=0.5)
    inner = ReliabilityWeightedFedAvg()
    strategy = AnomalyRejection(inner, tracker=tracker)
    assert strategy.tracker is tracker and inner.tracker is tracker


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"strategy": object()}, "must be a flwr Strategy", id="not-a-strategy"),
        pytest.param({"sample_size": 4}, "sample_size", id="sample-size"),
        pytest.param({"thresholds": {"norm_threshold": 5}}, "AnomalyThresholds", id="dict"),
    ],
)
def test_bad_parameters_raise(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"strategy": FedAvg(), **kwargs}
    with pytest.raises(ValueError, match=message):
        AnomalyRejection(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"), [("norm_threshold", 0.0), ("max_reject_fraction", 0.0)]
)
def test_bad_thresholds_raise_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        AnomalyThresholds(**{field: value})  # type: ignore[arg-type]


def test_thresholds_default_to_the_dataclass_and_are_used_as_given() -> None:
    assert AnomalyRejection(FedAvg()).thresholds == AnomalyThresholds()
    strict = AnomalyThresholds(norm_threshold=3.0, small_round_backward_pull=None)
    assert AnomalyRejection(FedAvg(), thresholds=strict).thresholds is strict


def test_is_a_flower_strategy_with_the_start_loop() -> None:
    strategy = AnomalyRejection(FedAvg())
    assert isinstance(strategy, Strategy) and callable(strategy.start)


def _trusted_round(replies: list[Message], rescore_accepted: bool) -> dict[str, Any]:
    """The report of one round of ``strategy=trusted``'s two strategies on ``replies``."""
    strategy = _keyed(
        AnomalyRejection(
            ReliabilityWeightedFedAvg(min_available_nodes=9), rescore_accepted=rescore_accepted
        )
    )
    configure(strategy, 1, GLOBAL, [*NODES, *COLLUDER_NODES])
    strategy.aggregate_train(1, replies)
    return strategy.round_report(1)


def _mean_directions(report: dict[str, Any]) -> dict[str, float]:
    """The honest devices' (0-8) mean direction z-scores in a round report."""
    return {str(i): report.devices[str(i)].mean_direction_z for i in range(9)}


COLLUDER_NODES = [110, 111, 112]


def _copies() -> list[Message]:
    """Devices 10-12 send one crafted update: the honest direction, halved (as ALIE's colluders
    send one vector near the honest mean)."""
    rng = np.random.default_rng(0)
    crafted = 0.5 * rng.standard_normal(D).astype(np.float32)
    return [
        reply(node, {"w": crafted.copy()}, 75, device=10 + i)
        for i, node in enumerate(COLLUDER_NODES)
    ]


def _flipped() -> Message:
    """Device 9 on node 109: the honest direction reversed."""
    rng = np.random.default_rng(0)
    return reply(NODES[9], {"w": -rng.standard_normal(D).astype(np.float32)}, 75, device=9)


def test_rescore_accepted_judges_the_honest_as_if_refused_copies_had_not_replied() -> None:
    # Execute
    rescored = _trusted_round([*_honest(), *_copies()], rescore_accepted=True)
    plain = _mean_directions(_trusted_round([*_honest(), *_copies()], rescore_accepted=False))
    without = _mean_directions(_trusted_round(_honest(), rescore_accepted=True))
    # Assert: the copies are refused as copies; judged among themselves, the honest devices score
    # as in a round without them, while the round's own scores let their pile shift the reference
    assert all("copy" in rescored.rejected[str(d)] for d in (10, 11, 12))
    assert _mean_directions(rescored) == pytest.approx(without, abs=1e-9)
    assert max(abs(plain[d] - without[d]) for d in without) > 1e-3


@pytest.mark.parametrize(("outlier", "cause"), [(_boosted, "norm"), (_flipped, "direction")])
def test_rescore_accepted_leaves_rounds_without_colluders_alone(outlier: Any, cause: str) -> None:
    # Execute: one update refused for its norm, or for its direction: a lone outlier barely moves
    # a coordinate-wise median, and the honest devices that resemble it must not look worse
    rescored = _trusted_round([*_honest(), outlier()], rescore_accepted=True)
    plain = _trusted_round([*_honest(), outlier()], rescore_accepted=False)
    # Assert
    assert cause in rescored.rejected["9"]
    assert _mean_directions(rescored) == _mean_directions(plain)
