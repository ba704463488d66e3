# Sourced by the benchmark scripts (from the repository root): Flower and W&B stay offline, and
# the datasets are found in ../shared/data unless FL_IOT_DATA_ROOT says otherwise.
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 WANDB_MODE=offline
export FL_IOT_DATA_ROOT="${FL_IOT_DATA_ROOT:-$(cd .. && pwd)/shared/data}"
