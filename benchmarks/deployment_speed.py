"""Deployment Engine against Simulation Engine: the same scenario, the same nodes, side by side.

Variants, each a whole process timed and sampled by this parent, alternating within each
repetition (this machine is shared and noisy):

``simulation``
    ``fl-iot`` with the scenario's overrides: Flower's Simulation Engine, one Ray actor per
    device, warm processes.
``deployment``
    ``fl-iot-deploy`` with the same overrides: a SuperLink with TLS and SuperNode
    authentication, one SuperNode per device on loopback, each holding only its own exported
    data, the scenario run with ``flwr run``.

Figures per variant: the steady round (median of rounds 2..R of ``metrics.jsonl``'s
``round_time_s``), the whole run (process start to exit, certificates and node start-up
included for the deployment), the slowest device's training per round (its ``wall-time-s``:
what the round cannot do without) and the peak PSS summed over the process tree (SuperLink,
SuperNodes, SuperExecs and ClientApp processes; Ray's processes). Ratios are deployment over
simulation within one repetition. Then, once, what a fresh ``flwr-clientapp`` process pays
before it handles a message: the interpreter with Flower's ClientApp runtime, and with fl-iot's
ClientApp too (median of 5 cold starts).

Run::

    source benchmarks/offline_env.sh
    .venv/bin/python benchmarks/deployment_speed.py --reps 2 --out /tmp/deployment_speed.json

About 6 minutes here for 2 repetitions of 3 devices x 5 rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_overhead import provenance, run_sampled  # noqa: E402

REPO = BENCH_DIR.parent
BIN = Path(sys.executable).parent
SCENARIO = [
    "scenario=healthcare_wearables",
    "seed=1",
    "scenario.fraction_train=1.0",
]


def overrides(devices: int, rounds: int) -> list[str]:
    return [*SCENARIO, f"scenario.num_devices={devices}", f"scenario.num_rounds={rounds}"]


def run_variant(variant: str, devices: int, rounds: int, work: Path, timeout_s: float) -> dict:
    run_dir = work / variant
    if variant == "simulation":
        command = [str(BIN / "fl-iot"), *overrides(devices, rounds), f"hydra.run.dir={run_dir}"]
        results = run_dir
    else:
        command = [str(BIN / "fl-iot-deploy"), "--out", str(run_dir), "--nodes", str(devices),
                   *overrides(devices, rounds)]  # fmt: skip
        results = run_dir / "results"
    env = {**os.environ, "FL_IOT_DATA_ROOT": ""}  # the bundled subset, as on a fresh clone
    code, wall_s, memory, _ = run_sampled(
        command, work / f"{variant}.log", env, interval_s=0.5, pss_every=4, timeout_s=timeout_s
    )
    records = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    rounds_s = [float(r["round_time_s"]) for r in records]
    training_s = [
        max(float(d.get("wall-time-s", 0.0)) for d in r["devices"].values()) for r in records
    ]
    return {
        "variant": variant,
        "exit_code": code,
        "wall_s": wall_s,
        "rounds_completed": len(records),
        "round_s": rounds_s,
        "steady_round_s": statistics.median(rounds_s[1:]) if len(rounds_s) > 1 else None,
        "steady_training_s": statistics.median(training_s[1:]) if len(training_s) > 1 else None,
        "central_accuracy": [r["central"]["accuracy"] for r in records],
        "peak_pss_mib": memory.peak_pss_mib,
        "peak_rss_mib": memory.peak_rss_mib,
    }


def cold_start_s(imports: str, repeats: int = 5) -> float:
    """Median wall time of a fresh interpreter that imports ``imports``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {imports}"], check=True, cwd=REPO)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="deployment-speed-") as scratch:
        for rep in range(args.reps):
            for variant in ("simulation", "deployment"):
                work = Path(scratch) / f"rep{rep}"
                work.mkdir(exist_ok=True)
                result = run_variant(variant, args.devices, args.rounds, work, args.timeout_s)
                result["rep"] = rep
                results.append(result)
                print(json.dumps(result), flush=True)
    cold = {
        "flower_clientapp_s": cold_start_s("flwr.supernode.cli.flwr_clientapp"),
        "flower_and_fl_iot_clientapp_s": cold_start_s(
            "flwr.supernode.cli.flwr_clientapp, fl_iot.client_app"
        ),
    }

    print(
        f"\n{args.devices} devices, one SuperNode each, {args.rounds} rounds, healthcare_wearables"
    )
    print("| rep | variant | steady round s | slowest training s | whole run s | peak PSS MiB |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['rep']} | {r['variant']} | {r['steady_round_s']:.2f} | "
            f"{r['steady_training_s']:.2f} | {r['wall_s']:.1f} | {r['peak_pss_mib']:.0f} |"
        )
    for rep in range(args.reps):
        simulated, deployed = (r for r in results if r["rep"] == rep)
        same = simulated["central_accuracy"] == deployed["central_accuracy"]
        print(
            f"rep {rep}: deployment / simulation steady round "
            f"{deployed['steady_round_s'] / simulated['steady_round_s']:.1f}x (goal <= 1.5x), "
            f"whole run {deployed['wall_s'] / simulated['wall_s']:.1f}x; "
            f"central accuracy per round identical: {same}"
        )
    print(
        f"cold flwr-clientapp process: {cold['flower_clientapp_s']:.2f} s to import Flower's "
        f"ClientApp runtime, {cold['flower_and_fl_iot_clientapp_s']:.2f} s with fl-iot's ClientApp"
    )
    if args.out:
        args.out.write_text(
            json.dumps({"provenance": provenance(), "runs": results, "cold_start": cold}, indent=1)
        )
    failed = [r for r in results if r["exit_code"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
