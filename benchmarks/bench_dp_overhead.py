"""Wall time of one local epoch with and without DP-SGD, per model and Opacus grad-sample mode.

Each repetition times one ``StandardTrainer`` round and one ``DpSgdTrainer`` round per mode (one
local epoch, same data, same starting weights), in an order that alternates between repetitions,
so every DP/non-DP ratio is paired within a repetition; the table reports the median of those
ratios and the median epoch times. Both sides run the whole ``train()`` call as a ClientApp
would, so the DP side includes ``make_private``, Poisson sampling and the epsilon bookkeeping.
The noise multiplier is fixed (no calibration) and the RDP cache is warm, as in a long-lived
worker after its first round.

Run::

    .venv/bin/python benchmarks/bench_dp_overhead.py            # full (about 2-4 minutes)
    .venv/bin/python benchmarks/bench_dp_overhead.py --reps 5   # quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flwr.app import RecordDict

from clients.data import LabeledData
from clients.dp_trainer import DpSgdTrainer, choose_grad_sample_mode
from clients.trainer import LocalTrainer, StandardTrainer, TrainSettings
from fl_iot.models import Cnn1d, Mlp

MODES = ("hooks", "functorch", "ew", "ghost")


@dataclass(frozen=True)
class Case:
    """A scenario's model and input shape."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int


CASES = (
    # The models the four scenarios ship with (conf/scenario/*.yaml).
    Case(
        "healthcare: Mlp on ECG beat (1,128) h=(64,32)",
        lambda: Mlp((1, 128), 5, hidden=(64, 32)),
        (1, 128),
        5,
    ),
    Case(
        "industrial: Mlp on C-MAPSS window (14,30) h=(64,32)",
        lambda: Mlp((14, 30), 2, hidden=(64, 32)),
        (14, 30),
        2,
    ),
    Case("smart home: Mlp (8,) h=(32,16)", lambda: Mlp((8,), 2, hidden=(32, 16)), (8,), 2),
    Case(
        "vehicle: Mlp on telemetry (6,64) h=(64,32)",
        lambda: Mlp((6, 64), 4, hidden=(64, 32)),
        (6, 64),
        4,
    ),
    # For reference: a 1-D CNN on the same beats, and the wide MLP of perf-baseline.md §2.
    Case("Cnn1d ECG beat (1,128)", lambda: Cnn1d((1, 128), 5), (1, 128), 5),
    Case("Mlp wide (561,) h=(128,64)", lambda: Mlp((561,), 6, hidden=(128, 64)), (561,), 6),
)


def _epoch_seconds(
    trainer: LocalTrainer,
    case: Case,
    weights: dict[str, torch.Tensor],
    data: LabeledData,
    settings: TrainSettings,
) -> float:
    model = case.build()
    model.load_state_dict(weights)
    started = time.perf_counter()
    report = trainer.train(model, data, settings, RecordDict())
    elapsed = time.perf_counter() - started
    if report.declined or report.steps == 0:
        raise RuntimeError(f"{type(trainer).__name__} did not train: {report.declined}")
    return elapsed


def run(reps: int, warmup: int, samples: int, batch_size: int) -> list[dict[str, object]]:
    """Time every case and mode; return one row per (case, mode)."""
    rows: list[dict[str, object]] = []
    settings = TrainSettings(
        local_epochs=1,
        batch_size=batch_size,
        privacy={"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5},
    )
    for case in CASES:
        rng = np.random.default_rng(0)
        data = LabeledData(
            rng.normal(size=(samples, *case.input_shape)).astype(np.float32),
            rng.integers(0, case.num_classes, samples).astype(np.int64),
        )
        weights = case.build().state_dict()
        contenders: dict[str, LocalTrainer] = {"non-DP": StandardTrainer()}
        contenders.update({mode: DpSgdTrainer(grad_sample_mode=mode) for mode in MODES})
        times: dict[str, list[float]] = {name: [] for name in contenders}
        ratios: dict[str, list[float]] = {mode: [] for mode in MODES}
        for rep in range(warmup + reps):
            names = list(contenders)
            if rep % 2:
                names.reverse()  # alternate the order: A B ... / ... B A
            measured = {
                name: _epoch_seconds(contenders[name], case, weights, data, settings)
                for name in names
            }
            if rep < warmup:
                continue
            for name, seconds in measured.items():
                times[name].append(seconds)
            for mode in MODES:
                ratios[mode].append(measured[mode] / measured["non-DP"])
        chosen = choose_grad_sample_mode(case.build())
        base_ms = 1e3 * statistics.median(times["non-DP"])
        rows.append({"case": case.name, "mode": "non-DP", "ms": base_ms, "ratio": None})
        for mode in MODES:
            q = statistics.quantiles(ratios[mode], n=4) if len(ratios[mode]) > 1 else [0, 0, 0]
            rows.append(
                {
                    "case": case.name,
                    "mode": mode + (" (auto)" if mode == chosen else ""),
                    "ms": 1e3 * statistics.median(times[mode]),
                    "ratio": statistics.median(ratios[mode]),
                    "iqr": (q[0], q[2]),
                }
            )
        print(f"done: {case.name}", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    """Parse arguments, run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="measured repetitions")
    parser.add_argument("--warmup", type=int, default=2, help="discarded repetitions")
    parser.add_argument("--samples", type=int, default=500, help="local training samples")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as each client trains (one CPU each); 2 are slower under load
    torch.manual_seed(0)
    rows = run(args.reps, args.warmup, args.samples, args.batch_size)
    load = os.getloadavg()[0]
    print(
        f"\nOne local epoch, N={args.samples}, batch {args.batch_size} (Poisson for DP), "
        f"1 torch thread, {args.reps} paired reps (+{args.warmup} warm-up), "
        f"load average {load:.1f}\n"
    )
    print("| model | mode | epoch ms (median) | DP/non-DP (median of paired ratios) | IQR |")
    print("|---|---|---|---|---|")
    for row in rows:
        ratio = "1" if row["ratio"] is None else f"**{row['ratio']:.2f}x**"
        iqr = "" if row["ratio"] is None else "{:.2f}-{:.2f}".format(*row["iqr"])  # type: ignore[str-format]
        print(f"| {row['case']} | {row['mode']} | {row['ms']:.1f} | {ratio} | {iqr} |")


if __name__ == "__main__":
    main()
