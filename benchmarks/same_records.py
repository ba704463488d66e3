"""Do the round records of a set of runs stay the same? This tree against another commit.

A change that claims to keep results (a speed-up, a refactoring) is checked by running the same
in-process runs in a git worktree of ``--ref`` and in this working tree, then comparing every
``metrics.jsonl`` record with the wall-clock fields left out (byte counts, simulated times,
strategy reports, per-device detail and scores all count). Prints one line per run and exits 1
if any differs.

Runs: trusted under ALIE (20 %), trusted_fedavg under label flip, FedProx and top-k with error
feedback on vehicle_fleet; local DP on smart_home; the realistic fleet with 20 % flaky devices in
sync, deadline (stale) and FedBuff rounds (trusted). A few minutes on 2 cores::

    source benchmarks/offline_env.sh
    .venv/bin/python benchmarks/same_records.py --ref 7e6121a
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

RUNS: dict[str, tuple[str, ...]] = {
    "alie": ("scenario=vehicle_fleet", "strategy=trusted", "attack=alie", "attack.fraction=0.2"),
    "label-flip": (
        "scenario=vehicle_fleet",
        "strategy=trusted_fedavg",
        "attack=label_flip",
        "attack.fraction=0.2",
    ),
    "local-dp": ("scenario=smart_home", "privacy=local_dp"),
    "fedprox": ("scenario=vehicle_fleet", "strategy=fedprox"),
    "topk": ("scenario=vehicle_fleet", "compression=topk", "strategy=trusted"),
    **{
        f"realistic-{mode}": (
            "scenario=vehicle_fleet",
            "scenario.num_rounds=6",
            "fleet=realistic",
            "fleet.flaky_fraction=0.2",
            "strategy=trusted",
            *extra,
        )
        for mode, extra in {
            "sync": (),
            "deadline": ("rounds=deadline", "rounds.late_updates=stale"),
            "fedbuff": ("rounds=fedbuff", "rounds.buffer_size=3"),
        }.items()
    },
}

WALL_CLOCK = {"round_time_s", "elapsed_s", "wall-time-s", "compute-time-s", "max_compute_time_s"}

# Runs in the tree given as its argument (the worktree or this one), from its own sources.
CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from fl_iot.client_app import build_client_app
from fl_iot.server import run_server
from tests.e2e import resolved_config
from tests.in_process_grid import InProcessGrid
out, name, overrides = Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
cfg = resolved_config("scenario.num_rounds=4", *overrides, "tracking.sinks=[jsonl]")
app = build_client_app(lambda _: cfg, state_dir=out / name / "devices")
run_server(InProcessGrid(app, cfg.scenario.num_devices), cfg, out / name)
"""


def strip(value: Any) -> Any:
    """``value`` without its wall-clock fields."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in WALL_CLOCK}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def records(path: Path) -> list[Any]:
    return [strip(json.loads(line)) for line in path.read_text().splitlines()]


def run_all(tree: Path, out: Path, names: list[str]) -> None:
    for name in names:
        subprocess.run(
            [sys.executable, "-c", CHILD, str(tree), str(out), name, *RUNS[name]],
            cwd=tree,
            check=True,
            capture_output=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="the commit to compare with")
    parser.add_argument("--runs", nargs="*", default=sorted(RUNS), choices=sorted(RUNS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fl-iot-same-") as tmp:
        work = Path(tmp)
        reference = work / "reference-tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(reference), args.ref],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        try:
            run_all(reference, work / "reference", args.runs)
            run_all(REPO, work / "current", args.runs)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(reference)], cwd=REPO, check=False
            )
        differing = 0
        for name in args.runs:
            before = records(work / "reference" / name / "metrics.jsonl")
            after = records(work / "current" / name / "metrics.jsonl")
            same = before == after
            differing += not same
            accuracy = before[-1].get("central", {}).get("accuracy")
            print(
                f"{name:20s} {len(before)} rounds  {'same' if same else 'DIFFERENT'}  "
                f"(final central accuracy {accuracy})"
            )
    return 1 if differing else 0


if __name__ == "__main__":
    raise SystemExit(main())
