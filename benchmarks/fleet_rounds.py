"""Unreliable fleets: time to accuracy per round mode, dropout, and flaky devices.

Every run is in process (the robustness probe's grid, no Ray) under the scenario's
``fleet=realistic`` profile unless said otherwise; accuracy is the central test accuracy, as the
mean of the last three rounds ("final") or of a trailing three-round window (time to accuracy).

``time-to-accuracy``
    ``rounds=sync``, ``rounds=deadline`` and ``rounds=fedbuff`` on healthcare_wearables and
    vehicle_fleet, 3 seeds. FedBuff's buffer is sync's round size and every available device
    trains at once; it runs as many rounds as it takes to aggregate as many updates as sync
    does, and (``fedbuff-3x``) three times as many: a time-to-accuracy race is run until the
    target or a time budget, not to a fixed number of updates, and FedBuff's equal-update run
    lasts only a few hundredths of sync's simulated time. Reported: each mode's final accuracy,
    and the simulated and wall time at which its trailing accuracy first reaches sync's final
    accuracy. Goal: FedBuff there in at most a third of sync's simulated time, and its final
    accuracy within 1 point of sync's.
``dropout``
    Every scenario, 3 seeds: ``fleet.failure_rate=0.5`` (half of the asked devices fail at random
    mid-training in every round) against the same run without failures, both on ``fleet=ideal``
    otherwise. Goal: final accuracy within 2 points.
``flaky``
    20 % of the devices are flaky (``fleet.flaky_fraction=0.2``: they fail mid-training in half
    of their rounds, their partial updates offered later), deadline rounds, healthcare_wearables,
    3 seeds: ``strategy=reliability`` and ``strategy=trusted`` against FedAvg and Flower's robust
    rules, on final accuracy and on simulated time to FedAvg's final accuracy.

Usage (from the repository root; each writes its rows to ``--out`` and skips rows already there)::

    source benchmarks/offline_env.sh
    .venv/bin/python benchmarks/fleet_rounds.py time-to-accuracy --out /tmp/tta.jsonl
    .venv/bin/python benchmarks/fleet_rounds.py dropout --out /tmp/dropout.jsonl
    .venv/bin/python benchmarks/fleet_rounds.py flaky --out /tmp/flaky.jsonl

``--table-only`` prints the table from ``--out`` alone (the tables in ``docs/fleets.md``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEEDS = (0, 1, 2)
WINDOW = 3
SCENARIOS = ("healthcare_wearables", "industrial_maintenance", "smart_home", "vehicle_fleet")
FLAKY_STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "reliability", "trusted")


def run(overrides: list[str]) -> dict[str, Any]:
    """One in-process run: per round the simulated clock, wall time and central accuracy."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import DictConfig, OmegaConf

    from fl_iot.client_app import build_client_app
    from fl_iot.run_config import compose_config
    from fl_iot.server import run_server
    from tests.in_process_grid import InProcessGrid

    GlobalHydra.instance().clear()
    base = ["scenario.fraction_evaluate=0.2", "tracking.sinks=[jsonl,summary]"]
    cfg = OmegaConf.create(
        OmegaConf.to_container(compose_config((*base, *overrides)), resolve=True)
    )
    assert isinstance(cfg, DictConfig)
    with tempfile.TemporaryDirectory(prefix="fleet_rounds_") as out:
        grid = InProcessGrid(build_client_app(lambda _: cfg), cfg.scenario.num_devices)
        started = time.perf_counter()
        run_server(grid, cfg, Path(out))
        seconds = time.perf_counter() - started
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").open()]
    return {
        "overrides": overrides,
        "seconds": round(seconds, 1),
        "clock_s": [r["fleet"]["clock_s"] for r in records],
        "wall_s": [r["elapsed_s"] for r in records],
        "accuracy": [r["central"]["accuracy"] for r in records],
        "updates": sum(
            1 for r in records for e in r["devices"].values() if e.get("outcome") == "on_time"
        ),
    }


def trailing(values: list[float]) -> list[float]:
    """The mean of each window of the last :data:`WINDOW` values (shorter at the start)."""
    return [statistics.fmean(values[max(0, i - WINDOW + 1) : i + 1]) for i in range(len(values))]


def final(row: dict[str, Any]) -> float:
    """The mean central accuracy of the last :data:`WINDOW` rounds."""
    return statistics.fmean(row["accuracy"][-WINDOW:])


def time_to(row: dict[str, Any], target: float, clock: str = "clock_s") -> float | None:
    """The first time (simulated or wall) the trailing accuracy reaches ``target``."""
    for t, accuracy in zip(row[clock], trailing(row["accuracy"]), strict=True):
        if accuracy >= target - 1e-12:
            return float(t)
    return None


def jobs(kind: str) -> list[tuple[str, list[str]]]:
    """``(label, overrides)`` of every run of the benchmark ``kind``."""
    from hydra.core.global_hydra import GlobalHydra

    from fl_iot.config import devices_per_round
    from fl_iot.run_config import compose_config

    found: list[tuple[str, list[str]]] = []
    if kind == "time-to-accuracy":
        for scenario in ("healthcare_wearables", "vehicle_fleet"):
            GlobalHydra.instance().clear()
            cfg = compose_config((f"scenario={scenario}",))
            rounds, per_round = int(cfg.scenario.num_rounds), devices_per_round(cfg)
            buffer = per_round  # sync's round size; concurrency: the whole fleet (the default)
            for seed in SEEDS:
                common = [f"scenario={scenario}", "fleet=realistic", f"seed={seed}"]
                found.append((f"{scenario} sync {seed}", [*common, "rounds=sync"]))
                found.append((f"{scenario} deadline {seed}", [*common, "rounds=deadline"]))
                for mode, budget in (("fedbuff", 1), (f"fedbuff-{LONG_FEDBUFF}x", LONG_FEDBUFF)):
                    found.append(
                        (
                            f"{scenario} {mode} {seed}",
                            [
                                *common,
                                "rounds=fedbuff",
                                f"rounds.buffer_size={buffer}",
                                "scenario.num_rounds="
                                f"{math.ceil(budget * rounds * per_round / buffer)}",
                            ],
                        )
                    )
    elif kind == "dropout":
        for scenario in SCENARIOS:
            for seed in SEEDS:
                common = [f"scenario={scenario}", f"seed={seed}"]
                failing = [*common, "fleet.failure_rate=0.5"]
                found.append((f"{scenario} none {seed}", common))
                found.append((f"{scenario} 50% {seed}", failing))
                found.append(
                    (f"{scenario} 50%+partial {seed}", [*failing, "rounds.partial_updates=use"])
                )
                found.append(
                    (
                        f"{scenario} 50%+over-selection {seed}",
                        [*failing, "rounds=deadline", "rounds.over_selection=2.0"],
                    )
                )
    elif kind == "flaky":
        for strategy in FLAKY_STRATEGIES:
            for seed in SEEDS:
                found.append(
                    (
                        f"healthcare_wearables {strategy} {seed}",
                        [
                            "scenario=healthcare_wearables",
                            f"strategy={strategy}",
                            "fleet=realistic",
                            "fleet.flaky_fraction=0.2",
                            "rounds=deadline",
                            f"seed={seed}",
                        ],
                    )
                )
    else:
        raise SystemExit(f"unknown benchmark {kind!r}; choose time-to-accuracy, dropout, flaky")
    return found


LONG_FEDBUFF = 3
"""How many times sync's updates the longer FedBuff run aggregates."""


def grouped(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        scenario, variant, _seed = row["label"].split(" ")
        groups.setdefault((scenario, variant), []).append(row)
    return groups


def table(kind: str, rows: list[dict[str, Any]]) -> str:
    """The markdown table of a benchmark's rows (means over seeds, per-seed where it matters)."""
    groups = grouped(rows)
    lines: list[str] = []
    if kind == "time-to-accuracy":
        lines += [
            "| scenario | mode | final accuracy (seeds) | mean | Δ vs sync | simulated time to "
            "sync's final (s, seeds) | vs sync | wall time to it (s) | updates |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for scenario in sorted({s for s, _ in groups}):
            sync = {r["label"].split()[-1]: r for r in groups[(scenario, "sync")]}
            for mode in ("sync", "deadline", "fedbuff", f"fedbuff-{LONG_FEDBUFF}x"):
                runs = sorted(groups.get((scenario, mode), []), key=lambda r: r["label"])
                if not runs:
                    continue
                finals = [final(r) for r in runs]
                sync_finals = [final(sync[r["label"].split()[-1]]) for r in runs]
                times = [time_to(r, t) for r, t in zip(runs, sync_finals, strict=True)]
                walls = [time_to(r, t, "wall_s") for r, t in zip(runs, sync_finals, strict=True)]
                sync_times = [
                    time_to(sync[r["label"].split()[-1]], t)
                    for r, t in zip(runs, sync_finals, strict=True)
                ]
                ratios = [
                    t / s for t, s in zip(times, sync_times, strict=True) if t is not None and s
                ]
                lines.append(
                    f"| {scenario} | {mode} | {', '.join(f'{f:.3f}' for f in finals)} | "
                    f"{statistics.fmean(finals):.3f} | "
                    f"{statistics.fmean(finals) - statistics.fmean(sync_finals):+.3f} | "
                    f"{', '.join('never' if t is None else f'{t:,.0f}' for t in times)} | "
                    f"{_ratio(ratios, len(times))} | "
                    f"{', '.join('–' if w is None else f'{w:.0f}' for w in walls)} | "
                    f"{statistics.fmean(r['updates'] for r in runs):.0f} |"
                )
    elif kind == "dropout":
        lines += [
            "| scenario | rounds | final accuracy without failures (seeds) | with 50 % failing "
            "(seeds) | mean Δ | within 2 points |",
            "|---|---|---|---|---|---|",
        ]
        modes = {
            "50%": "sync",
            "50%+partial": "sync, partial updates used",
            "50%+over-selection": "deadline, 2x over-selection",
        }
        for scenario in sorted({s for s, _ in groups}):
            clean = sorted(groups.get((scenario, "none"), []), key=lambda r: r["label"])
            a = [final(r) for r in clean]
            for variant, mode in modes.items():
                drop = sorted(groups.get((scenario, variant), []), key=lambda r: r["label"])
                b = [final(r) for r in drop]
                if not a or not b:
                    continue
                delta = statistics.fmean(b) - statistics.fmean(a[: len(b)])
                lines.append(
                    f"| {scenario} | {mode} | {', '.join(f'{x:.3f}' for x in a)} | "
                    f"{', '.join(f'{x:.3f}' for x in b)} | {delta:+.3f} | "
                    f"{'yes' if abs(delta) <= 0.02 else 'no'} |"
                )
    else:
        lines += [
            "| strategy | final accuracy (seeds) | mean | Δ vs fedavg | simulated time to "
            "fedavg's final (s, seeds) |",
            "|---|---|---|---|---|",
        ]
        fedavg = {
            r["label"].split()[-1]: r for r in groups.get(("healthcare_wearables", "fedavg"), [])
        }
        for strategy in FLAKY_STRATEGIES:
            runs = sorted(
                groups.get(("healthcare_wearables", strategy), []), key=lambda r: r["label"]
            )
            if not runs or not fedavg:
                continue
            finals = [final(r) for r in runs]
            targets = [final(fedavg[r["label"].split()[-1]]) for r in runs]
            times = [time_to(r, t) for r, t in zip(runs, targets, strict=True)]
            lines.append(
                f"| {strategy} | {', '.join(f'{f:.3f}' for f in finals)} | "
                f"{statistics.fmean(finals):.3f} | "
                f"{statistics.fmean(finals) - statistics.fmean(targets):+.3f} | "
                f"{', '.join('never' if t is None else f'{t:,.0f}' for t in times)} |"
            )
    return "\n".join(lines)


def _ratio(ratios: list[float], runs: int) -> str:
    if not ratios:
        return "never"
    text = f"{statistics.fmean(ratios):.3f}x"
    return text if len(ratios) == runs else f"{text} ({len(ratios)}/{runs} reached)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("time-to-accuracy", "dropout", "flaky"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    done = (
        [json.loads(line) for line in args.out.read_text().splitlines()]
        if args.out.exists()
        else []
    )
    if not args.table_only:
        known = {row["label"] for row in done}
        for label, overrides in jobs(args.kind):
            if label in known:
                continue
            row = {"label": label, **run(overrides)}
            print(
                f"{label}: final {final(row):.3f}, clock {row['clock_s'][-1]:,.0f} s, "
                f"{row['seconds']} s wall",
                flush=True,
            )
            with args.out.open("a") as file:
                file.write(json.dumps(row) + "\n")
            done.append(row)
    print(table(args.kind, done))


if __name__ == "__main__":
    main()
