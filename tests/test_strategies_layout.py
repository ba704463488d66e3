"""Every strategy we ship keeps the global model's layout: a BatchNorm model trains for rounds.

BatchNorm holds a 0-d int64 buffer (``num_batches_tracked``). A strategy that returns it with
another shape or dtype makes every later reply fail the layout check, and the model stops
learning after round 1. Each configuration trains a small torch model for four rounds with real
replies from torch clients and must accept every reply of every round.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, Strategy

from strategies import AnomalyRejection, ReliabilityWeightedFedAvg, RoundReport
from strategies.central_dp import CentralDP
from tests.test_strategies_support import FakeGrid, task_identity  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("task_identity")

NODES = list(range(11, 17))
ROUNDS = 4


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    )


def _data(node: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(node)
    centres = np.random.default_rng(99).normal(0.0, 2.0, size=(3, 4))
    y = rng.integers(0, 3, size=64)
    x = centres[y] + rng.standard_normal((64, 4))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def _push(messages: list[Message]) -> None:
    """Give the messages ids, as a grid does when it pushes them."""
    for message in messages:
        message.metadata.__dict__["_message_id"] = uuid.uuid4().hex


def _train(message: Message) -> Message:
    """A torch ClientApp: load the global model, a few SGD steps, reply the state dict."""
    model = _model()
    model.load_state_dict(message.content.array_records["arrays"].to_torch_state_dict())
    x, y = _data(message.metadata.dst_node_id)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    loss = torch.zeros(())
    for start in range(0, 64, 16):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(x[start : start + 16]), y[start : start + 16]
        )
        loss.backward()
        optimizer.step()
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": 64, "train-loss": loss.item()}),
        }
    )
    return Message(content=content, reply_to=message)


def _fedavg() -> FedAvg:
    return FedAvg(min_available_nodes=len(NODES))


def _reliability() -> ReliabilityWeightedFedAvg:
    return ReliabilityWeightedFedAvg(min_available_nodes=len(NODES))


def _central(inner: Strategy) -> CentralDP:
    # A small clipping norm: every update is clipped, integer buffers included.
    return CentralDP(
        inner, 1e-3, 0.05, num_sampled_devices=len(NODES), num_devices=len(NODES), seed=0
    )


CONFIGURATIONS: dict[str, Callable[[], Strategy]] = {
    "reliability": _reliability,
    "trusted_fedavg": lambda: AnomalyRejection(_fedavg()),
    "trusted": lambda: AnomalyRejection(_reliability()),
    "central_dp_fedavg": lambda: _central(_fedavg()),
    "central_dp_reliability": lambda: _central(_reliability()),
}


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_a_batchnorm_model_trains_for_rounds_and_keeps_its_layout(name: str) -> None:
    # Prepare
    strategy = CONFIGURATIONS[name]()
    initial = ArrayRecord(_model().state_dict())
    layout = {k: (a.dtype, tuple(a.shape)) for k, a in initial.items()}
    assert layout["1.num_batches_tracked"] == ("int64", ())
    arrays = initial
    for server_round in range(1, ROUNDS + 1):
        # Execute
        messages = list(
            strategy.configure_train(server_round, arrays, ConfigRecord(), FakeGrid(NODES))  # type: ignore[arg-type]
        )
        _push(messages)
        replies = [_train(m) for m in messages]
        result, _ = strategy.aggregate_train(server_round, replies)
        # Assert: a model every round, every reply accepted, the layout unchanged
        assert result is not None, f"round {server_round}: no model"
        report_fn = getattr(strategy, "round_report", None)
        report = report_fn(server_round) if callable(report_fn) else {}
        if isinstance(report, RoundReport):
            assert report.rejected == {}, f"round {server_round}: {report.rejected}"
            assert report.num_accepted == len(NODES)
        assert {k: (a.dtype, tuple(a.shape)) for k, a in result.items()} == layout
        assert list(result.keys()) == list(initial.keys())
        arrays = result
    model = _model()
    model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
    counter = arrays["1.num_batches_tracked"].numpy()
    assert counter.dtype == np.int64 and counter.shape == ()


def _central_counter(inner: Strategy) -> int:
    strategy = _central(inner)
    arrays = ArrayRecord(_model().state_dict())
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid(NODES)))  # type: ignore[arg-type]
    _push(messages)
    result, _ = strategy.aggregate_train(1, [_train(m) for m in messages])
    assert result is not None
    return int(result["1.num_batches_tracked"].numpy())


def test_without_central_dp_integer_buffers_are_the_rounded_weighted_mean() -> None:
    # Prepare: every client takes 4 steps from 0, so the counter is 4 on every reply
    strategy = _reliability()
    arrays = ArrayRecord(_model().state_dict())
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid(NODES)))  # type: ignore[arg-type]
    _push(messages)
    # Execute
    result, _ = strategy.aggregate_train(1, [_train(m) for m in messages])
    # Assert
    assert result is not None
    assert int(result["1.num_batches_tracked"].numpy()) == 4


@pytest.mark.parametrize("inner", [_fedavg, _reliability], ids=["fedavg", "reliability"])
def test_under_central_dp_integer_buffers_keep_the_global_models_value(
    inner: Callable[[], Strategy],
) -> None:
    # A count of local batches reveals a device's data size; noise cannot hide an integer.
    assert _central_counter(inner()) == 0
