"""The scale benchmark's lower bound: fl-iot's workload as a plain PyTorch loop on N processes.

Like ``pure_loop.py`` (same data, model, federation, trainer, seeds and evaluation, from
``overhead_workload.py``), but each round's devices are trained by ``--processes`` worker
processes (``multiprocessing``, fork): the parent loads the fleet's data once, then forks the
workers, which inherit it (the cheapest a hand-written loop gets on one machine: no data is
loaded or copied twice). Each worker trains its share of the round's devices in turn and returns
its example-weighted sum of their weights; the parent adds the shares (FedAvg), has the workers
evaluate the sampled devices' local test splits, and evaluates the central test split itself.

Run (``scale.py`` does this)::

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/pure_loop_parallel.py --workload wl.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
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

_WORKLOAD: Workload | None = None


def _train_share(
    args: tuple[list[int], dict[str, torch.Tensor], int],
) -> tuple[dict[str, np.ndarray], int]:
    """Train ``devices`` in turn; their example-weighted sum of weights and example count."""
    devices, state, server_round = args
    assert _WORKLOAD is not None
    fleet = load_fleet(_WORKLOAD)
    total: dict[str, np.ndarray] = {}
    examples = 0
    for device in devices:
        outcome = train_device(_WORKLOAD, fleet, device, state, server_round)
        for key, value in outcome.state.items():
            weighted = value.numpy().astype(np.float64) * outcome.num_examples
            total[key] = total[key] + weighted if key in total else weighted
        examples += outcome.num_examples
    return total, examples


def _evaluate_share(
    args: tuple[list[int], dict[str, torch.Tensor]],
) -> list[tuple[int, float, np.ndarray]]:
    devices, state = args
    assert _WORKLOAD is not None
    fleet = load_fleet(_WORKLOAD)
    return [evaluate_device(_WORKLOAD, fleet, d, state) for d in devices]


def _split(devices: list[int], parts: int) -> list[list[int]]:
    return [devices[i::parts] for i in range(parts)]


def run(workload: Workload, processes: int) -> dict[str, Any]:
    """Run all rounds on ``processes`` workers; the final central scores and sample counts."""
    global _WORKLOAD
    torch.set_num_threads(1)
    mark("main")
    _WORKLOAD = workload
    fleet = load_fleet(workload)  # before the fork: the workers inherit the data
    state = initial_state(workload, fleet)
    final: dict[str, float] = {}
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        if workload.central_evaluation:
            final = evaluate_central(workload, fleet, state)
        mark("round_end", round=0)
        rng = random.Random(workload.seed)
        devices = list(range(workload.num_devices))
        sampled_train: list[int] = []
        for server_round in range(1, workload.num_rounds + 1):
            chosen = rng.sample(devices, workload.devices_per_train_round)
            shares = pool.map(
                _train_share, [(part, state, server_round) for part in _split(chosen, processes)]
            )
            examples = sum(n for _, n in shares)
            state = {
                key: torch.from_numpy(
                    (sum(total[key] for total, _ in shares) / examples).astype(
                        state[key].numpy().dtype
                    )
                )
                for key in state
            }
            sampled_train.append(len(chosen))
            chosen = rng.sample(devices, workload.devices_per_evaluate_round)
            evaluations = pool.map(
                _evaluate_share, [(part, state) for part in _split(chosen, processes)]
            )
            federated_scores([e for share in evaluations for e in share])
            if workload.central_evaluation:
                final = evaluate_central(workload, fleet, state)
            mark("round_end", round=server_round)
    mark("main_end")
    return {"sampled_train": sampled_train, "final_central": final}


def main() -> None:
    """Run the loop on the workload given by ``--workload``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", type=Path, required=True, help="workload JSON file")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    args = parser.parse_args()
    report = run(Workload.load(args.workload), args.processes)
    mark("result", **report)
    mark("exit")


if __name__ == "__main__":
    main()
