#!/usr/bin/env bash
# The robustness benchmark: attack x defense x attacker fraction x 3 seeds on two scenarios,
# then the report into docs/. Start it in the background:
#   nohup bash benchmarks/run_robustness_grid.sh > robustness.log 2>&1 &
# The grid is cut into Hydra multiruns ("units": one scenario, strategy, seed and attacker
# fraction, every attack) and PARALLEL units run at once. Most of a short run is Ray start-up,
# actor start-up and message polling, so 4 runs at once finish ~1.8x more runs per hour than one
# on 2 cores (measured: 4 runs in 97 s against 43 s for one), and the jobs of a unit share one
# Ray session (engine.keep_ray_alive; benchmarks/bench_ray_session.sh). Units go 20 % before
# 40 %, seed by seed, ours first, so an interrupted grid still has whole seeds;
# engine.skip_completed=true makes a restart run only what is missing.
# STRATEGIES, SCENARIOS, SEEDS, FRACTIONS and PARALLEL select a part of the grid; GRID_DIR puts
# its runs elsewhere than multirun/robustness; SKIP_REPORT=1 skips the report; REPORT_ONLY=1
# writes it from the runs there are, RUNS_HOW saying how they ran when it was not this script
# (robustness_probe.py --keep-summaries lays out its in-process runs as the grid's, to the last
# digit of the grid's results). The last line says how long the runs took.
# PROBE_RUNS (default: multirun/fractions/*.jsonl and multirun/seeds/*.jsonl, if any) adds runs
# of robustness_probe.py (in process) to the report: the attacker fractions the grid does not run
# (10 % and 30 %),
#   .venv/bin/python benchmarks/robustness_probe.py --scenario healthcare_wearables vehicle_fleet \
#       --strategies fedavg fedmedian fedtrimmedavg multikrum bulyan trusted --attacks sign_flip \
#       gaussian scaling label_flip alie ipm weight_inflation --fractions 0.1 --seeds 0 1 2 \
#       --out multirun/fractions/probe_0.1.jsonl          (and the same with 0.3)
# and seeds 3-8 at 20 % (the goals again, over 9 seeds):
#   .venv/bin/python benchmarks/robustness_probe.py --scenario healthcare_wearables \
#       --strategies fedavg fedmedian fedtrimmedavg multikrum bulyan trusted --attacks none \
#       sign_flip gaussian scaling label_flip alie ipm weight_inflation --fractions 0.2 \
#       --seeds 3 4 5 6 7 8 --out multirun/seeds/probe_seeds3-8_healthcare_wearables.jsonl
#       (and the same with vehicle_fleet)
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/offline_env.sh
SCENARIOS="${SCENARIOS:-healthcare_wearables vehicle_fleet}"
STRATEGIES="${STRATEGIES:-trusted fedavg fedmedian fedtrimmedavg multikrum bulyan}"
SEEDS="${SEEDS:-0 1 2}"
FRACTIONS="${FRACTIONS:-0.2 0.4}"
PARALLEL="${PARALLEL:-4}"
GRID_DIR="${GRID_DIR:-multirun/robustness}"
PROBE_RUNS="${PROBE_RUNS-$(ls multirun/fractions/*.jsonl multirun/seeds/*.jsonl 2> /dev/null || true)}"
export GRID_DIR
mkdir -p "$GRID_DIR/logs"

units() {
    # The no-attack column first (3 seeds per unit), then the attacks, 20 % before 40 %, seed by
    # seed: an interrupted grid has whole seeds of the smaller fraction first.
    for strategy in $STRATEGIES; do
        for scenario in $SCENARIOS; do
            echo "robustness_clean $scenario $strategy ${SEEDS// /,} 0.0"
        done
    done
    for fraction in $FRACTIONS; do
        for seed in $SEEDS; do
            for strategy in $STRATEGIES; do
                for scenario in $SCENARIOS; do
                    echo "robustness $scenario $strategy $seed $fraction"
                done
            done
        done
    done
}

run_unit() {
    local experiment=$1 scenario=$2 strategy=$3 seeds=$4 fraction=$5
    local unit="$experiment $scenario $strategy seed=$seeds fraction=$fraction"
    local log="$GRID_DIR/logs/$experiment-$scenario-$strategy-${seeds//,/}-$fraction.log"
    local column=attacks
    [ "$experiment" = robustness ] || column=clean
    echo "$(date +%T) start $unit"
    if .venv/bin/fl-iot -m "+experiment=$experiment" "scenario=$scenario" \
        "strategy=$strategy" "seed=$seeds" "attack.fraction=$fraction" \
        "hydra.sweep.dir=$GRID_DIR/$scenario/$column" > "$log" 2>&1; then
        echo "$(date +%T) done  $unit"
    else
        echo "$(date +%T) FAILED $unit (see $log)"
    fi
}
export -f run_unit

if [ -z "${REPORT_ONLY:-}" ]; then
    started=$(date +%s)
    units | xargs -P "$PARALLEL" -L 1 bash -c 'run_unit "$@"' _
    echo "$(date +%T) grid runs finished in $(( ($(date +%s) - started) / 60 )) min" \
        "($(find "$GRID_DIR" -name summary.json | wc -l) completed runs in $GRID_DIR)"
fi
[ -n "${SKIP_REPORT:-}" ] && exit 0

# docs/robustness.md: the goal checks and sizes first, then one accuracy plot per scenario,
# then every cell (accuracy, macro-F1, rejection recall and precision).
{
    echo "# Robustness benchmark"
    .venv/bin/python benchmarks/robustness_goals.py "$GRID_DIR" ${PROBE_RUNS:+--probe $PROBE_RUNS} \
        ${RUNS_HOW:+--how "$RUNS_HOW"}
    echo
    echo "## Accuracy by attack, defense and attacker fraction"
    for scenario in $SCENARIOS; do
        .venv/bin/fl-iot-report "$GRID_DIR/$scenario" --rows attack strategy \
            --columns fraction --metric accuracy --plot "docs/robustness_$scenario.png" \
            --plot-panel attack > /dev/null
        printf '\n![%s](robustness_%s.png)\n' "$scenario" "$scenario"
    done
    echo
    echo "## Every cell"
    echo
    .venv/bin/fl-iot-report "$GRID_DIR" --rows scenario attack strategy \
        --columns fraction --metric accuracy macro_f1 recall precision
} > docs/robustness.md
