"""Resume after ``kill -9``: runs killed at a random point, resumed, compared bit for bit.

One uninterrupted ``fl-iot`` run on the Simulation Engine is the reference. Then ``--runs`` runs
of the same config are each killed with SIGKILL at a random point: after a random number ``k``
of completed rounds (1 to rounds - 1), plus a random part of a round's wall time, so the kill
lands anywhere in round ``k + 1`` (training, evaluation, between the sinks and the checkpoint).
Each is resumed with ``fl-iot resume=<run dir>`` and its final model compared with the
reference's, array by array, for exact equality. The table also says whether any process of
the killed run was still running 30 s after the kill (the reaper's job), how big the checkpoint
was, and the peak memory of the resumed ``fl-iot`` process (its Ray workers apart).

Usage (from the repository root; about 15 minutes for 10 runs here)::

    source benchmarks/offline_env.sh
    .venv/bin/python benchmarks/resume_after_kill.py --runs 10 --out /tmp/resume.jsonl

Other Hydra overrides replace the default config after ``--``. Runs already in ``--out`` are
skipped; ``--table-only`` prints the table from ``--out``. ``--checkpoint-cost`` instead runs the
default scenario (healthcare_wearables, 20 rounds) once in process and prints the share of its
wall time spent writing checkpoints, and the checkpoint's size.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT = (
    "scenario=smart_home",
    "scenario.num_rounds=8",
    "fleet=realistic",
    "rounds=fedbuff",
    "rounds.buffer_size=3",
    "strategy=trusted",
    "privacy=local_dp",
    "tracking.sinks=[console,jsonl,summary,checkpoint]",
)
LEFTOVER_WAIT_S = 30.0


def fl_iot(*args: str) -> list[str]:
    return [sys.executable, "-m", "fl_iot", *args]


def completed_rounds(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def same_model(a: Path, b: Path) -> tuple[bool, float]:
    """Whether two ``model.pt`` are bit-identical, and their largest absolute difference."""
    import torch

    first = torch.load(a, weights_only=True)
    second = torch.load(b, weights_only=True)
    if first.keys() != second.keys():
        return False, float("inf")
    identical, largest = True, 0.0
    for key in first:
        x, y = first[key].numpy(), second[key].numpy()
        identical &= x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
        if x.shape == y.shape:
            difference = np.abs(x.astype(np.float64) - y.astype(np.float64))
            largest = max(largest, float(difference.max(initial=0.0)))
    return identical, largest


def session_alive(sid: int) -> int:
    """How many processes of session ``sid`` still run (Ray's workers, the reaper)."""
    from fl_iot.reaper import process_stat

    count = 0
    for entry in Path("/proc").iterdir():
        stat = process_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None and int(stat[3]) == sid and stat[0] != "Z":
            count += 1
    return count


def killed_run(
    overrides: list[str], run_dir: Path, after_rounds: int, fraction: float, round_s: float
) -> dict[str, Any]:
    """Start a run, SIGKILL it ``fraction`` of a round after ``after_rounds`` rounds."""
    with (run_dir.parent / f"{run_dir.name}.log").open("w") as log:
        process = subprocess.Popen(
            fl_iot(*overrides, f"hydra.run.dir={run_dir}"),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    while completed_rounds(run_dir) < after_rounds:
        if process.poll() is not None:
            raise RuntimeError(f"the run ended before round {after_rounds}: see {log.name}")
        time.sleep(0.05)
    time.sleep(fraction * round_s)
    rounds_at_kill = completed_rounds(run_dir)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + LEFTOVER_WAIT_S
    while (alive := session_alive(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return {"rounds_logged_at_kill": rounds_at_kill, "left_running_after_30s": alive}


def run_measured(command: list[str], log: Path) -> tuple[int, int, str]:
    """Run ``command``; its exit code, its own peak RSS in KiB (Ray's workers apart), stderr."""
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, int(usage.ru_maxrss), log.read_text()


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--checkpoint-cost", action="store_true")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args()
    if args.checkpoint_cost:
        print(checkpoint_cost())
        return
    overrides = list(args.overrides) or list(DEFAULT)
    if not args.table_only:
        measure(args.runs, args.seed, overrides, args.out)
    print(table([json.loads(line) for line in args.out.read_text().splitlines() if line]))


def measure(runs: int, seed: int, overrides: list[str], out: Path) -> None:
    from fl_iot.checkpoint import checkpoint_dir, read_checkpoint

    done = {
        json.loads(line)["run"] for line in (out.read_text().splitlines() if out.exists() else [])
    }
    work = Path(tempfile.mkdtemp(prefix="resume_after_kill_"))
    reference = work / "reference"
    started = time.perf_counter()
    subprocess.run(fl_iot(*overrides, f"hydra.run.dir={reference}"), cwd=REPO, check=True)
    reference_s = time.perf_counter() - started
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    num_rounds = len(records)
    round_s = float(np.median([r["round_time_s"] for r in records]))
    rng = np.random.default_rng(seed)
    for run in range(runs):
        after_rounds = int(rng.integers(1, num_rounds))
        fraction = float(rng.uniform(0.0, 1.0))
        if run in done:
            continue
        run_dir = work / f"run-{run}"
        result: dict[str, Any] = {
            "run": run,
            "overrides": overrides,
            "after_rounds": after_rounds,
            "fraction_of_round": round(fraction, 3),
        }
        result.update(killed_run(overrides, run_dir, after_rounds, fraction, round_s))
        result["checkpoint_round"] = read_checkpoint(run_dir).round
        result["checkpoint_bytes"] = directory_bytes(checkpoint_dir(run_dir))
        started = time.perf_counter()
        returncode, peak_kib, stderr = run_measured(fl_iot(f"resume={run_dir}"), work / "log")
        result["resume_s"] = round(time.perf_counter() - started, 1)
        result["resume_peak_rss_mib"] = round(peak_kib / 1024, 1)
        result["resume_rc"] = returncode
        if returncode == 0:
            identical, largest = same_model(reference / "model.pt", run_dir / "model.pt")
            result["bit_identical"], result["max_abs_difference"] = identical, largest
            result["rounds_in_metrics"] = completed_rounds(run_dir)
        else:
            result["bit_identical"], result["error"] = False, stderr[-2000:]
        result["reference_s"] = round(reference_s, 1)
        with out.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
        print(json.dumps(result), flush=True)


def checkpoint_cost() -> str:
    """Wall time of the default run and of its checkpoint writes, side by side in one run."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import DictConfig, OmegaConf

    import fl_iot.server as server
    from fl_iot.checkpoint import SERVER_FILE, checkpoint_dir, write_checkpoint
    from fl_iot.client_app import build_client_app
    from fl_iot.run_config import compose_config
    from tests.in_process_grid import InProcessGrid

    GlobalHydra.instance().clear()
    composed = compose_config(("tracking.sinks=[summary]",))
    cfg = OmegaConf.create(OmegaConf.to_container(composed, resolve=True))
    assert isinstance(cfg, DictConfig)
    writes: list[float] = []

    def timed(run_dir: Path, checkpoint: Any) -> None:
        started = time.perf_counter()
        write_checkpoint(run_dir, checkpoint)
        writes.append(time.perf_counter() - started)

    server.write_checkpoint = timed  # type: ignore[assignment]
    out = Path(tempfile.mkdtemp(prefix="checkpoint_cost_"))
    grid = InProcessGrid(build_client_app(lambda _: cfg), cfg.scenario.num_devices)
    started = time.perf_counter()
    server.run_server(grid, cfg, out)
    total = time.perf_counter() - started
    size = (checkpoint_dir(out) / SERVER_FILE).stat().st_size
    return (
        f"default run: {total:.1f} s for {len(writes)} rounds; checkpoint writes "
        f"{sum(writes):.3f} s ({sum(writes) / total:.1%}), last {1000 * writes[-1]:.1f} ms, "
        f"{size / 1024:.0f} KiB"
    )


def table(results: list[dict[str, Any]]) -> str:
    """The runs as a Markdown table and a one-line verdict."""
    lines = [
        "| run | killed after round (+ part of the next) | checkpoint round | resumed | "
        "bit-identical | max abs difference | processes left 30 s after the kill | "
        "checkpoint size | resume wall time | resumed process peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r["run"]):
        lines.append(
            f"| {r['run']} | {r['after_rounds']} (+{r['fraction_of_round']:.2f}) | "
            f"{r['checkpoint_round']} | {'exit 0' if r['resume_rc'] == 0 else r['resume_rc']} | "
            f"{'yes' if r['bit_identical'] else 'NO'} | {r.get('max_abs_difference', '-')} | "
            f"{r['left_running_after_30s']} | {r['checkpoint_bytes'] / 1024:.0f} KiB | "
            f"{r['resume_s']} s | {r.get('resume_peak_rss_mib') or '-'} MiB |"
        )
    identical = sum(1 for r in results if r["bit_identical"])
    overrides = " ".join(results[0]["overrides"]) if results else ""
    lines.append("")
    lines.append(f"{identical} of {len(results)} resumed runs bit-identical ({overrides}).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
