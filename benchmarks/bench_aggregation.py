"""Aggregation cost: Flower's FedAvg vs trusted aggregation (anomaly rejection + reliability).

Both strategies aggregate the *same* reply Messages: one float32 matrix of ``d`` parameters
(100 × d/100) per reply, a MetricRecord with ``num-examples`` and ``train-loss``, a ``device``
ConfigRecord; 10 % of the replies are boosted ×10 so the rejection path runs. To the scoring a
2-D last array is the output layer, so its output-layer statistic runs at its largest sample.
Inputs are built before the clock starts, in one process; ``TaskIdentity`` is set by hand
because no simulation is running.

Timing is paired: each repetition runs FedAvg then trusted (A B A B ...), the ratio is taken per
pair, and the table shows the median ratio with its range. ``gc.collect()`` runs before each
timed call, outside the clock. Cells whose inputs would not fit in 60 % of the available memory
are skipped and listed.

Usage::

    .venv/bin/python benchmarks/bench_aggregation.py                    # full grid, 3 pairs
    .venv/bin/python benchmarks/bench_aggregation.py --n 1000 --d 1000000 --pairs 5
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from strategies import AnomalyRejection, ReliabilityWeightedFedAvg


class _Grid:
    """Just enough of a Grid for ``configure_train``: a fixed list of node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 * 1024**3


def build_replies(n: int, d: int, seed: int = 0) -> tuple[ArrayRecord, list[Message], list[int]]:
    """The global model and ``n`` reply Messages around a common update direction."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(d, dtype=np.float32)
    direction = rng.standard_normal(d, dtype=np.float32) * 0.01
    nodes = list(range(1, n + 1))
    attackers = set(range(max(1, n // 10)))
    replies = []
    for i, node in enumerate(nodes):
        update = direction + rng.standard_normal(d, dtype=np.float32) * 0.01
        if i in attackers:
            update *= 10.0
        instruction = Message(RecordDict({}), dst_node_id=node, message_type="train")
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array((g + update).reshape(100, -1))}),
                "metrics": MetricRecord(
                    {"num-examples": int(rng.integers(100, 300)), "train-loss": 0.5}
                ),
                "device": ConfigRecord({"device-id": i, "device-class": "bench"}),
            }
        )
        replies.append(Message(content, reply_to=instruction))
    return ArrayRecord({"w": Array(g.reshape(100, -1))}), replies, nodes


def time_cell(n: int, d: int, pairs: int) -> dict[str, float | list[float]]:
    """Paired timings of FedAvg and trusted aggregation on one set of replies."""
    global_arrays, replies, nodes = build_replies(n, d)
    fedavg = FedAvg(min_available_nodes=n)
    trusted = AnomalyRejection(ReliabilityWeightedFedAvg(min_available_nodes=n))
    trusted.configure_train(1, global_arrays, ConfigRecord(), _Grid(nodes))  # type: ignore[arg-type]
    # One untimed warm-up each: first-call imports and allocator growth are not aggregation.
    fedavg.aggregate_train(1, replies)
    trusted.aggregate_train(1, replies)
    rejected = len(trusted.round_report(1).rejected)
    t_fedavg, t_trusted, ratios = [], [], []
    for _ in range(pairs):
        gc.collect()
        start = time.perf_counter()
        fedavg.aggregate_train(1, replies)
        a = time.perf_counter() - start
        gc.collect()
        start = time.perf_counter()
        trusted.aggregate_train(1, replies)
        b = time.perf_counter() - start
        t_fedavg.append(a)
        t_trusted.append(b)
        ratios.append(b / a)
    del replies
    gc.collect()
    return {
        "fedavg": statistics.median(t_fedavg),
        "trusted": statistics.median(t_trusted),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "rejected": float(rejected),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--d", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--memory-fraction", type=float, default=0.6)
    args = parser.parse_args()
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

    results: dict[tuple[int, int], dict[str, float | list[float]]] = {}
    skipped: list[str] = []
    if bad := [d for d in args.d if d % 100]:
        parser.error(f"--d must be multiples of 100 (the model is a 100 × d/100 matrix), got {bad}")
    for d in args.d:
        for n in args.n:
            # Replies hold n·d float32 (plus np.save headers); generation needs one more update.
            need = 4 * n * d * 1.1 + 64 * d
            if need > args.memory_fraction * _available_bytes():
                skipped.append(f"n={n}, d={d}: needs {need / 2**30:.1f} GiB of replies")
                continue
            results[(n, d)] = time_cell(n, d, args.pairs)
            r = results[(n, d)]
            print(
                f"n={n:>5} d={d:>9}: FedAvg {1e3 * float(r['fedavg']):9.1f} ms, trusted "
                f"{1e3 * float(r['trusted']):9.1f} ms, ratio {float(r['ratio']):.2f}",
                flush=True,
            )

    load = os.getloadavg()[0]
    print(f"\nPaired medians over {args.pairs} pairs; 1-min load average at the end {load:.1f}.\n")
    print("| n | d | FedAvg ms | trusted ms | trusted/FedAvg: paired median (min–max) | rejected |")
    print("|---|---|---|---|---|---|")
    for (n, d), r in results.items():
        print(
            f"| {n} | {d:,} | {1e3 * float(r['fedavg']):.1f} | {1e3 * float(r['trusted']):.1f} | "
            f"{float(r['ratio']):.2f} ({float(r['ratio_min']):.2f}–{float(r['ratio_max']):.2f}) | "
            f"{int(float(r['rejected']))} |"
        )
    print("\nGrowth per 10× (ratio of median times; 10 = linear):\n")
    print("| step | FedAvg | trusted |")
    print("|---|---|---|")
    for (n, d), r in results.items():
        steps = (
            ((n * 10, d), f"n {n}→{n * 10}, d={d:,}"),
            ((n, d * 10), f"d {d:,}→{d * 10:,}, n={n}"),
        )
        for (n2, d2), label in steps:
            if (n2, d2) in results:
                r2 = results[(n2, d2)]
                print(
                    f"| {label} | {float(r2['fedavg']) / float(r['fedavg']):.1f} | "
                    f"{float(r2['trusted']) / float(r['trusted']):.1f} |"
                )
    if skipped:
        print("\nSkipped (memory):", "; ".join(skipped))
    if math.isnan(load):
        print("load average unavailable")


if __name__ == "__main__":
    main()
