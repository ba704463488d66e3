"""Trusted aggregation in a plain Flower app: no Hydra, no fl-iot runtime, ``import strategies``.

What it is
----------
A self-contained Flower 1.42 Message-API app on a synthetic numpy task: every node holds its own
non-IID slice of a 3-class Gaussian-blob problem and trains a softmax-regression model for a few
local SGD steps. The ServerApp runs ``AnomalyRejection(ReliabilityWeightedFedAvg(...))`` through
Flower's own ``Strategy.start`` loop. One node is malicious: in odd rounds it sends a boosted,
sign-flipped update (an anomaly), in even rounds an update with NaNs (a malformed reply). Both are
rejected and logged with the reason, the run completes, and every round's decisions are
available from ``strategy.round_report(round)``.

Run it
------
From the repository root::

    python -m examples.plain_flower.app   # 4 nodes, 3 rounds, the node of partition 0 malicious

or, in your own code, build the apps with :func:`make_apps` and pass them to
``flwr.simulation.run_simulation`` (or reference them from ``[tool.flwr.app.components]``).

Using the strategies in your app
--------------------------------
- ``strategies`` only needs the replies Flower's FedAvg needs: one ArrayRecord and one
  MetricRecord with ``num-examples``. Reliability history is keyed by the Flower node id, or,
  after ``strategy.set_roster({node_id: device_key})``, by device. This app builds that roster
  before round 1 with a roll call (a ``query`` message each node answers with its partition id,
  :func:`roll_call`), so its reports name partitions. A reply's own claim is never its
  identity: one that claims another device than the roster's is rejected as a spoof.
- Compressed updates: ``make_apps(compression=Compression("topk", TopK(0.1), error_feedback=True))``
  puts ``clients.compression.compression_mod`` on the ClientApp and ``DecodedUpdates`` (with
  ``decode_update``) around the strategy: the strategy judges decoded updates, and a payload
  that does not decode is refused like any failed reply.
- Replies that Flower's FedAvg would crash on (missing keys, NaN, wrong shapes, negative counts)
  are rejected instead; the round goes on with the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result, Strategy

from clients.compression import Compression, compression_mod, decode_update
from strategies import (
    AnomalyRejection,
    DecodedUpdates,
    ReliabilityWeightedFedAvg,
    RoundReport,
    answered_node,
    sent_destinations,
)

CLASSES, FEATURES = 3, 8
log = logging.getLogger(__name__)


def _blobs(
    seed: int, size: int, label_mix: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around fixed class centres; ``label_mix`` skews the labels (non-IID)."""
    centres = np.random.default_rng(2024).normal(0.0, 2.0, size=(CLASSES, FEATURES))
    rng = np.random.default_rng(seed)
    y = rng.choice(CLASSES, size=size, p=label_mix)
    x = centres[y] + rng.standard_normal((size, FEATURES))
    return x.astype(np.float32), y


def node_data(partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The local dataset of a node: 60-140 samples with a Dirichlet(1) label mix."""
    rng = np.random.default_rng(partition_id)
    mix = rng.dirichlet(np.ones(CLASSES))
    return _blobs(seed=1000 + partition_id, size=int(rng.integers(60, 141)), label_mix=mix)


def _softmax_loss_grad(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    logits = x @ w.T + b
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    return loss, p.T @ x, p.sum(axis=0)


def _model(msg: Message) -> tuple[np.ndarray, np.ndarray]:
    """The weights and biases a message carries (copies, so that training can update them)."""
    record = msg.content.array_records["arrays"]
    return record["w"].numpy().copy(), record["b"].numpy().copy()


def _setting(msg: Message, key: str) -> float:
    """A number from the message's ``config`` ConfigRecord."""
    return float(cast(float, msg.content.config_records["config"][key]))


def accuracy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Share of correct argmax predictions."""
    return float(np.mean(np.argmax(x @ w.T + b, axis=1) == y))


def initial_arrays() -> ArrayRecord:
    """The global model before round 1 (zeros: softmax regression is convex)."""
    return _record(np.zeros((CLASSES, FEATURES), np.float32), np.zeros(CLASSES, np.float32))


def _record(w: np.ndarray, b: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"w": Array(w.astype(np.float32)), "b": Array(b.astype(np.float32))})


def roll_call(grid: Grid, num_nodes: int, timeout_s: float = 60.0) -> dict[int, str]:
    """Wait for ``num_nodes`` nodes and ask each for its partition id: ``{node_id: partition}``.

    Replies are matched to nodes through the message they answer (``sent_destinations`` after
    sending, ``answered_node``), not through what they say about themselves.
    """
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < num_nodes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {num_nodes} nodes connected")
        time.sleep(0.1)
    messages = [Message(RecordDict({}), dst_node_id=n, message_type="query") for n in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout_s))
    sent = sent_destinations(messages)
    roster: dict[int, str] = {}
    for r in replies:
        node = answered_node(r, sent)
        record = r.content.config_records.get("device") if r.has_content() else None
        partition = record.get("device-id") if record is not None else None
        if node is not None and isinstance(partition, int) and not isinstance(partition, bool):
            roster[node] = str(partition)
    return roster


@dataclass
class ExampleResult:
    """What the ServerApp hands back: Flower's Result, the round reports, central accuracy."""

    result: Result
    reports: dict[int, RoundReport] = field(default_factory=dict)
    central_accuracy: dict[int, float] = field(default_factory=dict)


def make_apps(
    num_nodes: int = 4,
    num_rounds: int = 3,
    malicious_partition: int | None = 0,
    on_finish: Callable[[ExampleResult], None] | None = None,
    compression: Compression | None = None,
) -> tuple[ServerApp, ClientApp]:
    """Build the ServerApp and ClientApp of this example.

    Parameters
    ----------
    num_nodes : int
        Nodes in the federation; the server waits for all of them every round.
    num_rounds : int
        Federated rounds.
    malicious_partition : int or None
        Partition id of the node that misbehaves (odd rounds: boosted sign flip, even rounds:
        NaN values); ``None`` for an honest federation.
    on_finish : callable or None
        Receives the :class:`ExampleResult` when the ServerApp is done (the ServerApp runs in
        a thread of the calling process under ``run_simulation``).
    compression : Compression or None
        Send updates compressed (``clients.compression``): a mod on the ClientApp encodes, a
        ``DecodedUpdates`` wrapper in front of the strategy decodes.
    """
    server = ServerApp()
    client = ClientApp(mods=[compression_mod(compression)] if compression else [])
    x_test, y_test = _blobs(seed=7, size=600)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = AnomalyRejection(
            ReliabilityWeightedFedAvg(
                min_available_nodes=num_nodes,
                min_train_nodes=num_nodes,  # wait for every node: no round-1 under-sampling
                min_evaluate_nodes=num_nodes,
            )
        )
        strategy.set_roster(roll_call(grid, num_nodes))
        outer: Strategy = strategy
        if compression is not None:
            outer = DecodedUpdates(strategy, partial(decode_update, compression=compression))
        central: dict[int, float] = {}

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            acc = accuracy(arrays["w"].numpy(), arrays["b"].numpy(), x_test, y_test)
            central[server_round] = acc
            if server_round > 0:
                rejected = strategy.round_report(server_round).rejected
                log.info(
                    "round %d: central accuracy %.3f, rejected %s", server_round, acc, rejected
                )
            return MetricRecord({"accuracy": acc})

        result = outer.start(
            grid=grid,
            initial_arrays=initial_arrays(),
            num_rounds=num_rounds,
            train_config=ConfigRecord({"lr": 0.5, "steps": 5}),
            evaluate_fn=evaluate,
        )
        reports = {r: strategy.round_report(r) for r in range(1, num_rounds + 1)}
        if on_finish is not None:
            on_finish(ExampleResult(result, reports, central))

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        w0, b0 = _model(msg)
        lr, steps = _setting(msg, "lr"), int(_setting(msg, "steps"))
        x, y = node_data(partition)
        w, b = w0.copy(), b0.copy()
        loss = 0.0
        for _ in range(steps):
            loss, grad_w, grad_b = _softmax_loss_grad(w, b, x, y)
            w -= lr * grad_w
            b -= lr * grad_b
        if partition == malicious_partition:
            if int(_setting(msg, "server-round")) % 2 == 1:
                w, b = w0 - 50.0 * (w - w0), b0 - 50.0 * (b - b0)  # boosted sign flip
            else:
                w[0, 0] = np.nan  # malformed
        content = RecordDict(
            {
                "arrays": _record(w, b),
                "metrics": MetricRecord({"num-examples": len(y), "train-loss": loss}),
                # Optional: checked against the roster (a mismatch is refused as a spoof).
                "device": ConfigRecord({"device-id": partition}),
            }
        )
        return Message(content=content, reply_to=msg)

    @client.query()
    def query(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        content = RecordDict({"device": ConfigRecord({"device-id": partition})})
        return Message(content=content, reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        x, y = node_data(int(context.node_config["partition-id"]))
        w, b = _model(msg)
        loss, _, _ = _softmax_loss_grad(w, b, x, y)
        metrics: dict[str, int | float | list[int] | list[float]] = {
            "num-examples": len(y),
            "eval-loss": loss,
            "eval-acc": accuracy(w, b, x, y),
        }
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return server, client


def main() -> None:
    """Run the example in Flower's Simulation Engine and print what happened."""
    from flwr.simulation import run_simulation

    results: list[ExampleResult] = []
    server, client = make_apps(on_finish=results.append)
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=4,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "log_to_driver": False},
        },
    )
    for server_round, report in results[0].reports.items():
        print(f"round {server_round}: rejected {report.rejected}")
    print(f"central accuracy by round: {results[0].central_accuracy}")


if __name__ == "__main__":
    main()
