#!/usr/bin/env bash
# What keeping one Ray session per process saves the robustness grid (engine.keep_ray_alive).
# The grid's shape in small: 4 Hydra multiruns side by side (vehicle_fleet, FedAvg, seeds 0-3, each
# over 4 attacks at 20 %, +experiment=robustness sizes), 16 runs, once with a fresh Ray session per
# run (Flower's way) and once with one session per multirun, in the order given. Prints each
# batch's wall time and runs per minute, the ratio, and whether both batches gave the same final
# accuracies (they must: a kept session does not change what a run computes).
#   bash benchmarks/bench_ray_session.sh            # false true
#   bash benchmarks/bench_ray_session.sh true false  # the other order
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/offline_env.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
values=("$@")
[ ${#values[@]} -gt 0 ] || values=(false true)
for keep in "${values[@]}"; do
    out="$work/keep-$keep"
    mkdir -p "$out"
    start=$(date +%s.%N)
    printf '%s\n' 0 1 2 3 | xargs -P 4 -L 1 bash -c '.venv/bin/fl-iot -m +experiment=robustness \
        scenario=vehicle_fleet strategy=fedavg seed=$0 attack=sign_flip,gaussian,scaling,alie \
        attack.fraction=0.2 engine.keep_ray_alive='"$keep"' hydra.sweep.dir='"$out"'/seed$0 \
        > '"$out"'/seed$0.log 2>&1 || echo "FAILED seed=$0 (see '"$out"'/seed$0.log)"'
    seconds=$(python3 -c "import time; print(round(time.time() - $start, 1))")
    echo "$keep $seconds" >> "$work/times"
    echo "keep_ray_alive=$keep: $(find "$out" -name summary.json | wc -l) runs in $seconds s"
done
python3 - "$work" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
times = dict(line.split() for line in (work / "times").read_text().splitlines())
for keep, seconds in times.items():
    runs = len(list((work / f"keep-{keep}").rglob("summary.json")))
    print(f"keep_ray_alive={keep}: {60 * runs / float(seconds):.2f} runs/min")
if {"true", "false"} <= times.keys():
    print(f"wall time, kept / fresh session: {float(times['true']) / float(times['false']):.2f}x")
    finals = {}
    for keep in ("true", "false"):
        for path in (work / f"keep-{keep}").rglob("summary.json"):
            summary = json.loads(path.read_text())
            config = summary["config"]
            key = (config["seed"], config["attack"]["name"])
            finals.setdefault(key, {})[keep] = summary["final"]["central"]["accuracy"]
    same = sum(1 for v in finals.values() if len(v) == 2 and v["true"] == v["false"])
    print(f"runs with the same final accuracy in both batches: {same} of {len(finals)}")
PY
