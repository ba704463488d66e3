"""Non-finite metric values of accepted replies never reach the metrics a strategy returns."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import MetricRecord
from flwr.serverapp.strategy import FedAvg

from strategies import AnomalyRejection, ReliabilityWeightedFedAvg
from strategies.weighting import weighted_metrics
from tests.test_strategies_support import (
    configure,
    reply,
    task_identity,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.usefixtures("task_identity")

GLOBAL = {"w": np.zeros(2, np.float32)}
V = np.array([1.0, 2.0], np.float32)
NODES = [10, 11, 12]


def _replies(bad_loss: float, bad_curve: list[float]) -> list:
    """Three identical updates with counts 10, 20, 30; node 12 reports ``bad_*`` metrics."""
    return [
        reply(10, {"w": V}, 10, metrics={"train-loss": 0.4, "curve": [1.0, 2.0]}),
        reply(11, {"w": V}, 20, metrics={"train-loss": 0.1, "curve": [3.0, 4.0]}),
        reply(12, {"w": V}, 30, metrics={"train-loss": bad_loss, "curve": bad_curve}),
    ]


def _all_finite(metrics: MetricRecord) -> bool:
    values = [
        v for value in metrics.values() for v in (value if isinstance(value, list) else [value])
    ]
    return all(math.isfinite(v) for v in values)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_our_average_leaves_the_non_finite_entry_out_and_renormalises(bad: float) -> None:
    # Prepare
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=3)
    configure(strategy, 1, GLOBAL, NODES)
    # Execute
    arrays, metrics = strategy.aggregate_train(1, _replies(bad, [5.0, bad]))
    # Assert: the update is accepted (its arrays are fine); its metrics are left out of the
    # average of each key, the others' weights 10 : 20 renormalised
    assert arrays is not None and metrics is not None
    assert strategy.round_report(1).num_accepted == 3
    assert metrics["train-loss"] == pytest.approx((0.4 * 10 + 0.1 * 20) / 30)
    assert metrics["curve"] == pytest.approx([(1 * 10 + 3 * 20) / 30, (2 * 10 + 4 * 20) / 30])


def test_a_key_no_reply_reports_finitely_is_omitted() -> None:
    records = [{"loss": math.nan, "acc": 0.5}, {"loss": math.inf, "acc": 0.7}]
    assert weighted_metrics(records, [1.0, 3.0], ["loss", "acc"]) == {"acc": pytest.approx(0.65)}


def test_finite_metrics_are_averaged_exactly_as_flower_does() -> None:
    replies = _replies(0.3, [5.0, 6.0])
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=3, quantity_cap=10.0)
    configure(strategy, 1, GLOBAL, NODES)
    _, ours = strategy.aggregate_train(1, replies)
    _, flowers = FedAvg(min_available_nodes=3).aggregate_train(1, _replies(0.3, [5.0, 6.0]))
    assert ours == flowers


def test_around_a_flower_strategy_a_non_finite_key_is_dropped_for_the_round() -> None:
    # Prepare: Flower's FedAvg averages every record with one set of weights
    strategy = AnomalyRejection(FedAvg(min_available_nodes=3))
    configure(strategy, 1, GLOBAL, NODES)
    # Execute
    arrays, metrics = strategy.aggregate_train(1, _replies(math.nan, [5.0, 6.0]))
    # Assert
    assert arrays is not None and metrics is not None
    assert "train-loss" not in metrics and "curve" in metrics
    assert _all_finite(metrics)


@pytest.mark.parametrize(
    "strategy",
    [ReliabilityWeightedFedAvg(), AnomalyRejection(FedAvg())],
    ids=["reliability", "trusted_fedavg"],
)
def test_evaluation_metrics_drop_a_non_finite_key(strategy: object) -> None:
    replies = [
        reply(1, records={"metrics": MetricRecord({"num-examples": 10, "loss": 1.0, "acc": 0.5})}),
        reply(
            2, records={"metrics": MetricRecord({"num-examples": 30, "loss": math.nan, "acc": 0.9})}
        ),
    ]
    metrics = strategy.aggregate_evaluate(1, replies)  # type: ignore[attr-defined]
    assert metrics is not None and dict(metrics) == {"acc": pytest.approx(0.8)}
