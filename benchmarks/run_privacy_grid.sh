#!/usr/bin/env bash
# The privacy/utility benchmark: target epsilon in {1, 3, 8, no DP} x 3 seeds on two scenarios,
# then the report into docs/. Start it in the background:
#   nohup bash benchmarks/run_privacy_grid.sh > privacy.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/offline_env.sh
SCENARIOS="${SCENARIOS:-healthcare_wearables smart_home}"
FL_IOT=.venv/bin/fl-iot

for scenario in $SCENARIOS; do
    "$FL_IOT" -m +experiment=privacy_reference "scenario=$scenario"
    "$FL_IOT" -m +experiment=privacy "scenario=$scenario"
done

.venv/bin/fl-iot-report multirun/privacy --rows scenario --columns epsilon \
    --metric accuracy macro_f1 epsilon_spent \
    --output docs/privacy.md --plot docs/privacy.png --plot-panel scenario
cat benchmarks/opacus_reference.md >> docs/privacy.md
