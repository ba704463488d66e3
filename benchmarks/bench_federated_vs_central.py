"""Federated result next to centralized training of the same model on the same split.

For each scenario this runs the federated study as configured (fl-iot on Flower's Simulation
Engine) and, in the same process, trains the same model centrally on the union of the devices'
local training splits, with the same optimiser, batch size and initialisation. Both are evaluated
on the scenario's central held-out split. Centralized training is the reference a federated run
aims for; the goal is federated within 5 points of it.

    python benchmarks/bench_federated_vs_central.py                       # all four scenarios
    python benchmarks/bench_federated_vs_central.py --scenarios smart_home --seeds 0 1 2
    python benchmarks/bench_federated_vs_central.py --output docs/federated_vs_central.md

Real datasets are read from ``$FL_IOT_DATA_ROOT`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra.core.global_hydra import GlobalHydra
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clients.data import LabeledData  # noqa: E402
from clients.trainer import shuffled_batches  # noqa: E402
from fl_iot.cli import run_study  # noqa: E402
from fl_iot.device_runtime import run_context  # noqa: E402
from fl_iot.metrics import evaluate_model, scores  # noqa: E402
from fl_iot.models import build_model  # noqa: E402
from fl_iot.run_config import compose_config  # noqa: E402

SCENARIOS = ("healthcare_wearables", "industrial_maintenance", "smart_home", "vehicle_fleet")


def centralized(cfg, epochs: int, batch_size: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Train the scenario's model on all devices' local training data pooled; score it."""
    from omegaconf import DictConfig, OmegaConf

    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(resolved, DictConfig)
    run = run_context(resolved)
    parts = [run.data.device_split(i)[0] for i in range(run.data.num_devices)]
    pooled = LabeledData(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
    torch.manual_seed(cfg.seed)
    model = build_model(
        resolved.scenario.model, run.data.source.input_shape, run.data.source.num_classes
    )
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.scenario.optimizer.learning_rate,
        momentum=cfg.scenario.optimizer.momentum,
        weight_decay=cfg.scenario.optimizer.weight_decay,
    )
    criterion = nn.CrossEntropyLoss()
    x, y = torch.from_numpy(pooled.x), torch.from_numpy(pooled.y)
    generator = torch.Generator().manual_seed(cfg.seed)
    for _ in range(epochs):
        model.train()
        for batch in shuffled_batches(len(y), batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            criterion(model(x[batch]), y[batch]).backward()
            optimizer.step()
    loss, confusion = evaluate_model(model, run.data.source.test, run.data.source.num_classes)
    return {**scores(confusion), "loss": loss, "train_samples": float(len(pooled))}


def main() -> None:
    """Run the comparison and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=10, help="centralized training epochs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override")
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    os.environ.setdefault("FL_IOT_DATA_ROOT", str(REPO.parent / "shared" / "data"))
    torch.set_num_threads(1)

    rows = []
    for scenario in args.scenarios:
        federated_runs, central_runs, seconds = [], [], []
        for seed in args.seeds:
            GlobalHydra.instance().clear()
            cfg = compose_config(
                (f"scenario={scenario}", f"seed={seed}", "tracking.sinks=[summary]", *args.override)
            )
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as run_dir:
                summary = run_study(cfg, Path(run_dir))
            seconds.append(time.perf_counter() - started)
            federated_runs.append(summary["final"]["central"])  # type: ignore[index]
            central_runs.append(centralized(cfg, args.epochs, args.batch_size))
        rows.append((scenario, cfg, federated_runs, central_runs, statistics.median(seconds)))

    overrides = " ".join(args.override) or "none"
    lines = [
        f"Federated (as configured; overrides: {overrides}) vs centralized ({args.epochs} epochs, "
        f"batch {args.batch_size}), central held-out split, seeds {args.seeds}; mean over seeds.",
        "",
        "| scenario | devices × rounds (fraction) | federated acc | centralized acc | Δ acc "
        "| federated macro-F1 | centralized macro-F1 | Δ macro-F1 | within 5 points | fed run s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, cfg, federated_runs, central_runs, run_s in rows:
        fed = {k: statistics.mean(r[k] for r in federated_runs) for k in ("accuracy", "macro_f1")}
        cen = {k: statistics.mean(r[k] for r in central_runs) for k in ("accuracy", "macro_f1")}
        gaps = {k: 100 * (cen[k] - fed[k]) for k in fed}
        within = "yes" if max(gaps.values()) <= 5.0 else "no"
        shape = (
            f"{cfg.scenario.num_devices} × {cfg.scenario.num_rounds} "
            f"({cfg.scenario.fraction_train:g})"
        )
        lines.append(
            f"| {scenario} | {shape} | {fed['accuracy']:.3f} | {cen['accuracy']:.3f} "
            f"| {gaps['accuracy']:+.1f} | {fed['macro_f1']:.3f} | {cen['macro_f1']:.3f} "
            f"| {gaps['macro_f1']:+.1f} | {within} | {run_s:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            table
            + "\n\nReproduce: `python benchmarks/bench_federated_vs_central.py"
            + "".join(f" --override {o}" for o in args.override)
            + f" --scenarios {' '.join(args.scenarios)}`\n"
        )


if __name__ == "__main__":
    main()
