#!/usr/bin/env bash
# How many robustness runs at once keep 2 cores busiest: the same 12 vehicle_fleet runs (FedAvg,
# 4 attacks x 3 seeds, 20 %, +experiment=robustness sizes) at each PARALLEL value in turn, into a
# temporary directory; prints the wall time of each batch and runs per minute.
#   bash benchmarks/bench_grid_parallel.sh 4 6
# Measured 2026-11-29 on 2 vCPU: 280 s at 4, 292 s at 6 (2.6 and 2.5 runs/min): the grid script's
# PARALLEL=4 is the ceiling, more runs at once only share the same cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/offline_env.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
values=("$@")
[ ${#values[@]} -gt 0 ] || values=(4 6)
for parallel in "${values[@]}"; do
    out="$work/p$parallel"
    mkdir -p "$out"
    start=$(date +%s)
    for seed in 0 1 2; do
        for attack in sign_flip gaussian scaling label_flip; do echo "$seed $attack"; done
    done | xargs -P "$parallel" -L 1 bash -c '.venv/bin/fl-iot +experiment=robustness \
        scenario=vehicle_fleet strategy=fedavg seed=$0 attack=$1 attack.fraction=0.2 \
        hydra.run.dir='"$out"'/$0-$1 > '"$out"'/$0-$1.log 2>&1 || echo "FAILED seed=$0 $1"'
    seconds=$(($(date +%s) - start))
    done_runs=$(find "$out" -name summary.json | wc -l)
    echo "PARALLEL=$parallel: $done_runs runs in $seconds s ($(python3 -c \
        "print(round(60 * $done_runs / $seconds, 2))") runs/min)"
done
