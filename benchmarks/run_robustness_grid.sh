#!/usr/bin/env bash
# The robustness benchmark: attack x defense x attacker fraction x 3 seeds on two scenarios,
# then the report into docs/. Runs for about 3 hours on a 2-core machine; start it in the
# background: nohup bash benchmarks/run_robustness_grid.sh > robustness.log 2>&1 &
# Each scenario's sweep runs in its own process, both at once: most of a short run is Ray
# start-up and polling, so two sweeps share the two cores better than one after the other.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 WANDB_MODE=offline
export FL_IOT_DATA_ROOT="${FL_IOT_DATA_ROOT:-$(cd .. && pwd)/shared/data}"
SCENARIOS="${SCENARIOS:-healthcare_wearables vehicle_fleet}"
# STRATEGIES=fedavg,trusted runs a part of the grid (the default is the experiment's list).
STRATEGY_OVERRIDE=${STRATEGIES:+strategy=$STRATEGIES}
FL_IOT=.venv/bin/fl-iot

sweep() {
    local scenario=$1
    "$FL_IOT" -m +experiment=robustness_clean "scenario=$scenario" $STRATEGY_OVERRIDE
    "$FL_IOT" -m +experiment=robustness "scenario=$scenario" $STRATEGY_OVERRIDE
}

pids=()
for scenario in $SCENARIOS; do
    sweep "$scenario" > "multirun-robustness-$scenario.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
[ -n "${SKIP_REPORT:-}" ] && exit 0

.venv/bin/fl-iot-report multirun/robustness --rows scenario attack strategy --columns fraction \
    --metric accuracy macro_f1 recall precision \
    --output docs/robustness.md --plot docs/robustness.png
