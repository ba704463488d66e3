"""A plain Flower 1.42 FedAvg app doing fl-iot's workload, with no fl-iot orchestration.

No Hydra, no roll call, no sinks, no round loop of fl-iot's: a ``ServerApp`` whose ``@app.main()``
runs ``flwr.serverapp.strategy.FedAvg(...).start(...)`` with central evaluation, and a
``ClientApp`` with ``@app.train()`` / ``@app.evaluate()``, run with
``flwr.simulation.run_simulation`` and the same ``backend_config`` as ``fl_iot/simulation.py``.
Each device does exactly fl-iot's work (see ``overhead_workload.py``).

Two small things a careful plain-Flower user writes too, both stated in the benchmark's output:

- ``main`` waits until all ``num_devices`` nodes are registered before ``strategy.start`` (a
  0.05 s poll of ``grid.get_node_ids()``). Without it FedAvg computes round 1's sample size from
  the nodes registered so far (Flower's round-1 under-sampling race) and may train fewer devices
  than fl-iot does; fl-iot's roll call waits for every node as well.
- ``min_available_nodes`` is the fleet size, so later rounds also sample from the whole fleet.

Run (the benchmark does this)::

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/plain_flower_app.py --workload wl.json
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.simulation import run_simulation
from overhead_workload import (
    Workload,
    evaluate_central,
    evaluate_device,
    federated_scores,
    initial_state,
    load_fleet,
    mark,
    train_device,
)

mark("imported")


def metric_record(values: dict[str, float]) -> MetricRecord:
    """A MetricRecord of float scores."""
    items: dict[str, int | float | list[int] | list[float]] = {
        k: float(v) for k, v in values.items()
    }
    return MetricRecord(items)


def build_client_app(workload: Workload) -> ClientApp:
    """A ClientApp whose handlers do one fl-iot device's train / evaluate work."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        device_id = int(context.node_config["partition-id"])
        fleet = load_fleet(workload)
        arrays: ArrayRecord = msg.content["arrays"]  # type: ignore[assignment]
        config: ConfigRecord = msg.content["config"]  # type: ignore[assignment]
        outcome = train_device(
            workload,
            fleet,
            device_id,
            arrays.to_torch_state_dict(),
            int(config["server-round"]),  # type: ignore[arg-type]
        )
        content = RecordDict(
            {
                "arrays": ArrayRecord(outcome.state),
                "metrics": MetricRecord(
                    {
                        "num-examples": outcome.num_examples,
                        "train-loss": outcome.loss,
                        "train-steps": outcome.steps,
                        "wall-time-s": outcome.wall_time_s,
                    }
                ),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        device_id = int(context.node_config["partition-id"])
        arrays: ArrayRecord = msg.content["arrays"]  # type: ignore[assignment]
        n, loss, confusion = evaluate_device(
            workload, load_fleet(workload), device_id, arrays.to_torch_state_dict()
        )
        metrics = MetricRecord(
            {"num-examples": n, "loss": loss, "confusion": [int(c) for c in confusion.ravel()]}
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def build_server_app(workload: Workload, report: dict[str, Any]) -> ServerApp:
    """A ServerApp running FedAvg's own ``start`` loop with central evaluation each round."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        mark("main")
        torch.set_num_threads(1)
        fleet = load_fleet(workload)
        num_classes = fleet.num_classes
        sampled: dict[str, list[int]] = {"train": [], "evaluate": []}

        def count(phase: str) -> Callable[[list[RecordDict], str], MetricRecord]:
            def aggregate(records: list[RecordDict], weight_key: str) -> MetricRecord:
                sampled[phase].append(len(records))
                return aggregate_metricrecords(records, weight_key)

            return aggregate

        def federated(records: list[RecordDict], weight_key: str) -> MetricRecord:
            sampled["evaluate"].append(len(records))
            results = []
            for record in records:
                metrics = record.metric_records["metrics"]
                matrix = np.asarray(metrics["confusion"], dtype=np.int64)
                results.append(
                    (
                        int(cast(int, metrics["num-examples"])),
                        float(cast(float, metrics["loss"])),
                        matrix.reshape(num_classes, num_classes),
                    )
                )
            return metric_record(federated_scores(results))

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            result = evaluate_central(workload, fleet, arrays.to_torch_state_dict())
            mark("round_end", round=server_round)
            return metric_record(result)

        strategy = FedAvg(
            fraction_train=workload.fraction_train,
            fraction_evaluate=workload.fraction_evaluate,
            min_train_nodes=workload.min_train_devices,
            min_evaluate_nodes=workload.min_evaluate_devices,
            min_available_nodes=workload.num_devices,
            train_metrics_aggr_fn=count("train"),
            evaluate_metrics_aggr_fn=federated,
        )
        arrays = ArrayRecord(initial_state(workload, fleet))
        while len(list(grid.get_node_ids())) < workload.num_devices:
            time.sleep(0.05)
        result = strategy.start(
            grid,
            arrays,
            num_rounds=workload.num_rounds,
            timeout=workload.round_timeout_s,
            evaluate_fn=central if workload.central_evaluation else None,
        )
        final = result.evaluate_metrics_serverapp.get(workload.num_rounds)
        report.update(
            sampled_train=sampled["train"],
            sampled_evaluate=sampled["evaluate"],
            final_central=dict(final) if final is not None else {},
        )
        mark("main_end")

    return app


def main() -> None:
    """Run the plain Flower app on the workload given by ``--workload``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", type=Path, required=True, help="workload JSON file")
    args = parser.parse_args()
    workload = Workload.load(args.workload)
    report: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        run_simulation(
            server_app=build_server_app(workload, report),
            client_app=build_client_app(workload),
            num_supernodes=workload.num_devices,
            backend_config=workload.backend_config(),
        )
    if not report:
        logging.getLogger(__name__).error("the ServerApp did not finish")
        raise SystemExit(1)
    mark("result", **report)
    mark("exit")


if __name__ == "__main__":
    main()
