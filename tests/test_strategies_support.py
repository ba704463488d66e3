"""Builders shared by the strategy tests: reply Messages, a fake grid, a synthetic fleet.

No tests live here. Messages need ``TaskIdentity`` outside a running simulation; the
``task_identity`` fixture sets it and restores the previous values afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from scipy.stats import norm


@pytest.fixture
def task_identity() -> Iterator[None]:
    """Set TaskIdentity (needed to build Messages outside a simulation), then restore it."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)  # type: ignore[attr-defined]
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved  # type: ignore[attr-defined]


class FakeGrid:
    """Just enough of a Grid for ``configure_train``: a fixed list of node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def arrayrecord(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def reply(
    node: int,
    arrays: Mapping[str, np.ndarray] | ArrayRecord | None = None,
    num_examples: object = 10,
    *,
    device: int | None = None,
    metrics: Mapping[str, object] | None = None,
    error: str | None = None,
    records: Mapping[str, object] | None = None,
) -> Message:
    """A train reply from ``node`` as a ClientApp would send it.

    ``records`` replaces the whole content (for malformed replies); ``metrics`` adds entries.
    """
    instruction = Message(RecordDict({}), dst_node_id=node, message_type="train")
    if error is not None:
        return Message(Error(code=0, reason=error), reply_to=instruction)
    if records is None:
        content: dict[str, object] = {}
        if arrays is not None:
            content["arrays"] = arrays if isinstance(arrays, ArrayRecord) else arrayrecord(arrays)
        metric_values: dict[str, object] = {"train-loss": 0.5}
        if num_examples is not None:
            metric_values["num-examples"] = num_examples
        metric_values.update(metrics or {})
        content["metrics"] = MetricRecord(metric_values)  # type: ignore[arg-type]
        if device is not None:
            content["device"] = ConfigRecord({"device-id": device, "device-class": "test"})
    else:
        content = dict(records)
    return Message(RecordDict(content), reply_to=instruction)  # type: ignore[arg-type]


def configure(
    strategy: object, server_round: int, arrays: Mapping[str, np.ndarray], nodes: list[int]
) -> list[Message]:
    """Run ``configure_train`` of ``strategy`` on a fake grid of ``nodes``."""
    return list(
        strategy.configure_train(server_round, arrayrecord(arrays), ConfigRecord(), FakeGrid(nodes))  # type: ignore[attr-defined]
    )


def numpy_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


# -- synthetic federated task: softmax regression trained locally with SGD -----------------------

CLASSES, FEATURES = 5, 20


def _local_sgd(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    w, b = w.copy(), b.copy()
    order = rng.permutation(len(y))
    for start in range(0, len(y), 16):
        j = order[start : start + 16]
        logits = x[j] @ w.T + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(j)), y[j]] -= 1.0
        p /= len(j)
        w -= 0.1 * p.T @ x[j]
        b -= 0.1 * p.sum(axis=0)
    return w, b


@dataclass
class Fleet:
    """One round of a synthetic fleet: the global model, each device's model and count."""

    global_model: dict[str, np.ndarray]
    models: list[dict[str, np.ndarray]]
    counts: list[int]
    attackers: set[int]


ATTACKS = ("sign_flip", "gaussian", "scaling", "label_flip", "alie", "ipm", "weight_inflation")


class SyntheticTask:
    """Softmax regression on Gaussian classes, split over ``n`` devices with Dirichlet(α) labels.

    Devices keep their data across rounds; the first ``fraction·n`` devices are attackers.
    Attacks (Baruch et al. 2019 for ALIE, Xie et al. 2019 for IPM):

    - ``sign_flip``: ``-u``; ``scaling``: ``10·u``; ``gaussian``: N(0, σ²) with the honest median
      norm; ``label_flip``: trains honestly on labels ``C-1-y``;
    - ``alie``: ``mean - z·std`` of the honest updates, z from the number of attackers;
    - ``ipm``: ``-0.5·mean`` of the honest updates;
    - ``weight_inflation``: honest update, claimed count ×100.
    """

    def __init__(
        self, attack: str | None, fraction: float, n: int = 50, seed: int = 0, alpha: float = 0.5
    ) -> None:
        if attack is not None and attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; valid: {ATTACKS}")
        self.rng = np.random.default_rng(seed)
        self.attack = attack
        self.n = n
        self.means = self.rng.standard_normal((CLASSES, FEATURES))
        f = round(fraction * n) if attack else 0
        self.attackers = set(range(f))
        self.data = []
        for i in range(n):
            labels = self.rng.dirichlet([alpha] * CLASSES)
            count = int(self.rng.integers(40, 160))
            y = self.rng.choice(CLASSES, size=count, p=labels)
            x = self.means[y] + self.rng.standard_normal((count, FEATURES))
            if attack == "label_flip" and i in self.attackers:
                y = CLASSES - 1 - y
            self.data.append((x, y))
        y_test = self.rng.integers(0, CLASSES, size=2000)
        self.test = (self.means[y_test] + self.rng.standard_normal((2000, FEATURES)), y_test)

    def initial_model(self) -> dict[str, np.ndarray]:
        return {
            "w": (self.rng.standard_normal((CLASSES, FEATURES)) * 0.01).astype(np.float32),
            "b": np.zeros(CLASSES, dtype=np.float32),
        }

    def round(self, model: dict[str, np.ndarray]) -> Fleet:
        """Every device trains one local epoch from ``model``; attackers then do their thing."""
        w0, b0 = model["w"].astype(np.float64), model["b"].astype(np.float64)
        updates, counts = [], []
        for x, y in self.data:
            w, b = _local_sgd(w0, b0, x, y, self.rng)
            updates.append(np.concatenate([(w - w0).ravel(), b - b0]))
            counts.append(len(y))
        u = np.array(updates)
        f = len(self.attackers)
        honest = u[f:]
        if f and self.attack == "sign_flip":
            u[:f] = -u[:f]
        elif f and self.attack == "scaling":
            u[:f] = 10.0 * u[:f]
        elif f and self.attack == "gaussian":
            scale = np.median(np.linalg.norm(honest, axis=1)) / np.sqrt(u.shape[1])
            u[:f] = self.rng.standard_normal((f, u.shape[1])) * scale
        elif f and self.attack == "alie":
            s = np.floor(self.n / 2 + 1) - f
            z = norm.ppf((self.n - s) / self.n)
            u[:f] = honest.mean(axis=0) - z * honest.std(axis=0)
        elif f and self.attack == "ipm":
            u[:f] = -0.5 * honest.mean(axis=0)
        elif f and self.attack == "weight_inflation":
            counts[:f] = [100 * c for c in counts[:f]]
        split = CLASSES * FEATURES
        models = [
            {
                "w": (w0 + row[:split].reshape(CLASSES, FEATURES)).astype(np.float32),
                "b": (b0 + row[split:]).astype(np.float32),
            }
            for row in u
        ]
        return Fleet(model, models, counts, set(self.attackers))

    def accuracy(self, model: dict[str, np.ndarray]) -> float:
        x, y = self.test
        return float(np.mean(np.argmax(x @ model["w"].T + model["b"], axis=1) == y))


def fleet_round(
    attack: str | None, fraction: float, n: int = 50, seed: int = 0, alpha: float = 0.5
) -> Fleet:
    """One round of :class:`SyntheticTask` from its initial model."""
    task = SyntheticTask(attack, fraction, n=n, seed=seed, alpha=alpha)
    return task.round(task.initial_model())


def fleet_roster(n: int, first_node: int = 1000) -> dict[int, str]:
    """The roster of :func:`fleet_replies`: node ``first_node + i`` is device ``i``."""
    return {first_node + i: str(i) for i in range(n)}


def fleet_replies(fleet: Fleet, first_node: int = 1000) -> list[Message]:
    """Reply Messages of a fleet round: device-id ``i`` replies from node ``first_node + i``."""
    return [
        reply(first_node + i, model, count, device=i)
        for i, (model, count) in enumerate(zip(fleet.models, fleet.counts, strict=True))
    ]


def train(strategy: object, task: SyntheticTask, rounds: int) -> list[float]:
    """Run ``rounds`` federated rounds of ``task`` through ``strategy``; test accuracy per round."""
    model = task.initial_model()
    nodes = [1000 + i for i in range(task.n)]
    set_roster = getattr(strategy, "set_roster", None)
    if callable(set_roster):
        set_roster(fleet_roster(task.n))
    accuracies = []
    for server_round in range(1, rounds + 1):
        configure(strategy, server_round, model, nodes)
        fleet = task.round(model)
        arrays, _ = strategy.aggregate_train(server_round, fleet_replies(fleet))  # type: ignore[attr-defined]
        if arrays is not None:
            model = numpy_arrays(arrays)
        accuracies.append(task.accuracy(model))
    return accuracies
