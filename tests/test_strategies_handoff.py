"""The wrapper hands its scores to any strategy that takes them, and knows no strategy class."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from logging import WARNING

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from strategies import AnomalyRejection, ReliabilityTracker, ReliabilityWeightedFedAvg
from strategies.handoff import ScoredAggregation, ScoredReplies
from strategies.validation import clone_reply
from tests.conftest import REPO_ROOT
from tests.test_strategies_support import (
    configure,
    numpy_arrays,
    reply,
    task_identity,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.usefixtures("task_identity")

D = 64
GLOBAL = {"w": np.zeros(D, np.float32)}
NODES = list(range(100, 110))
ROSTER = {node: str(i) for i, node in enumerate(NODES)}


def _replies(seed: int = 0) -> list[Message]:
    """Nine honest updates around one direction (devices 0-8) and device 9's boosted one."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(D).astype(np.float32)
    honest = [
        reply(NODES[i], {"w": direction + 0.3 * rng.standard_normal(D).astype(np.float32)}, 60 + i)
        for i in range(9)
    ]
    return [*honest, reply(NODES[9], {"w": 20 * direction}, 75)]


class RecordingFedAvg(FedAvg):
    """A third-party strategy that takes scored replies: no fl-iot class in its ancestry."""

    def __init__(self) -> None:
        super().__init__(min_available_nodes=len(NODES))
        self.tracker = ReliabilityTracker()
        self.scored: dict[int, ScoredReplies] = {}
        self.aggregated: list[Message] = []

    def receive_scored(self, server_round: int, scored: ScoredReplies) -> None:
        self.scored[server_round] = scored

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.aggregated = list(replies)
        return super().aggregate_train(server_round, self.aggregated)


def test_any_strategy_with_the_protocol_gets_the_tracker_the_scores_and_the_very_messages() -> None:
    # Prepare
    inner = RecordingFedAvg()
    strategy = AnomalyRejection(inner)
    strategy.set_roster(ROSTER)
    configure(strategy, 1, GLOBAL, NODES)
    replies = _replies()
    # Execute
    strategy.aggregate_train(1, replies)
    # Assert
    assert isinstance(inner, ScoredAggregation)
    assert strategy.tracker is inner.tracker
    scored = inner.scored[1]
    assert [e.parsed.device for e in scored.entries] == [str(i) for i in range(9)]
    assert inner.aggregated == replies[:9]
    assert all(a is b for a, b in zip(inner.aggregated, replies[:9], strict=True))
    assert scored.covers(inner.aggregated)
    report = strategy.round_report(1)
    assert list(report.rejected) == ["9"]
    np.testing.assert_allclose(
        [e.anomaly_score for e in scored.entries],
        [report.devices[str(i)].anomaly_score for i in range(9)],
    )


def test_a_strategy_without_the_protocol_gets_copies_and_no_scores() -> None:
    # Prepare
    inner = FedAvg(min_available_nodes=len(NODES))
    strategy = AnomalyRejection(inner)
    configure(strategy, 1, GLOBAL, NODES)
    # Execute
    arrays, _ = strategy.aggregate_train(1, _replies())
    # Assert: FedAvg over the nine accepted replies; the wrapper keeps its own tracker
    assert not isinstance(inner, ScoredAggregation)
    assert arrays is not None
    expected, _ = FedAvg().aggregate_train(1, _replies()[:9])
    assert expected is not None
    np.testing.assert_allclose(
        numpy_arrays(arrays)["w"], numpy_arrays(expected)["w"], rtol=1e-5, atol=1e-6
    )
    assert isinstance(strategy.tracker, ReliabilityTracker)


def test_replies_other_than_the_scored_ones_are_screened_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare: a real handoff for nine replies, then copies of those replies aggregated
    recorder = RecordingFedAvg()
    wrapper = AnomalyRejection(recorder)
    wrapper.set_roster(ROSTER)
    configure(wrapper, 1, GLOBAL, NODES)
    replies = _replies()[:9]
    wrapper.aggregate_train(1, replies)
    handoff = recorder.scored[1]
    strategies = [ReliabilityWeightedFedAvg(min_available_nodes=len(NODES)) for _ in range(2)]
    for strategy in strategies:
        strategy.set_roster(ROSTER)
        configure(strategy, 1, GLOBAL, NODES)
    expected, _ = strategies[0].aggregate_train(1, replies)
    copies = [clone_reply(m, m.content) for m in replies]
    strategies[1].receive_scored(1, handoff)
    # Execute
    with caplog.at_level(WARNING):
        arrays, _ = strategies[1].aggregate_train(1, copies)
    # Assert: screened and scored as if nothing had been handed over
    assert handoff.covers(replies) and not handoff.covers(copies)
    assert "screening again" in caplog.text
    assert arrays is not None and expected is not None
    np.testing.assert_array_equal(numpy_arrays(arrays)["w"], numpy_arrays(expected)["w"])
    assert strategies[1].round_report(1) == strategies[0].round_report(1)


def test_the_wrappers_import_no_strategy_they_may_wrap() -> None:
    concrete = {"strategies.reliability_fedavg", "strategies.anomaly", "strategies.central_dp"}
    for wrapper in ("anomaly", "central_dp"):
        path = REPO_ROOT / "strategies" / f"{wrapper}.py"
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert imported & concrete == set(), wrapper
