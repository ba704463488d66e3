"""The lower bound of the overhead benchmark: fl-iot's workload as a plain PyTorch loop.

One process, no framework, no Ray: every round samples as many devices as FedAvg would (a seeded
``random.Random``; which devices may differ from the Flower runs), trains each in turn with
``StandardTrainer`` and the device's class budget, averages the updates weighted by sample count
(numpy), evaluates the new global model on as many devices' local test splits as FedAvg's
federated evaluation would, and evaluates it on the central test split (before round 1 too).

The only non-PyTorch import beyond fl-iot's data/metrics modules is ``flwr.app``, which
``clients.trainer`` (the trainer under test) imports for its ``RecordDict`` type.

Run (the benchmark does this)::

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/pure_loop.py --workload wl.json
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
from overhead_workload import (
    Fleet,
    TrainOutcome,
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


def weighted_average(outcomes: list[TrainOutcome]) -> dict[str, torch.Tensor]:
    """FedAvg of the updates in numpy, weighted by each device's number of examples."""
    total = float(sum(o.num_examples for o in outcomes))
    averaged: dict[str, torch.Tensor] = {}
    for key in outcomes[0].state:
        acc = np.zeros(outcomes[0].state[key].shape, dtype=np.float64)
        for outcome in outcomes:
            acc += outcome.state[key].numpy() * (outcome.num_examples / total)
        averaged[key] = torch.from_numpy(acc.astype(outcomes[0].state[key].numpy().dtype))
    return averaged


def run(workload: Workload) -> dict[str, object]:
    """Run all rounds; return the final central scores and the per-round sample counts."""
    torch.set_num_threads(1)
    mark("main")
    fleet: Fleet = load_fleet(workload)
    rng = random.Random(workload.seed)
    state = initial_state(workload, fleet)
    final: dict[str, float] = {}
    if workload.central_evaluation:
        final = evaluate_central(workload, fleet, state)
    mark("round_end", round=0)
    devices = list(range(workload.num_devices))
    sampled_train: list[int] = []
    sampled_evaluate: list[int] = []
    for server_round in range(1, workload.num_rounds + 1):
        chosen = rng.sample(devices, workload.devices_per_train_round)
        outcomes = [train_device(workload, fleet, d, state, server_round) for d in chosen]
        state = weighted_average(outcomes)
        sampled_train.append(len(outcomes))
        chosen = rng.sample(devices, workload.devices_per_evaluate_round)
        federated_scores([evaluate_device(workload, fleet, d, state) for d in chosen])
        sampled_evaluate.append(len(chosen))
        if workload.central_evaluation:
            final = evaluate_central(workload, fleet, state)
        mark("round_end", round=server_round)
    mark("main_end")
    return {
        "sampled_train": sampled_train,
        "sampled_evaluate": sampled_evaluate,
        "final_central": final,
    }


def main() -> None:
    """Run the pure loop on the workload given by ``--workload``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", type=Path, required=True, help="workload JSON file")
    args = parser.parse_args()
    report = run(Workload.load(args.workload))
    mark("result", **report)
    mark("exit")


if __name__ == "__main__":
    main()
