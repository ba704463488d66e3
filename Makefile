# The two commands of the README quickstart:
#   make run    install everything, then run the default scenario (healthcare_wearables)
#   make test   install everything, then lint, type-check and run the test suite (what CI runs)
# and, for a real deployment on this machine (docs/deployment.md):
#   make deploy [ARGS="--nodes 4 scenario=smart_home"]   SuperLink + SuperNodes over TLS, flwr run
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint deploy

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/install.sh
	bash scripts/install.sh
	touch $@

run: install
	$(BIN)/fl-iot

deploy: install
	$(BIN)/fl-iot-deploy $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 WANDB_MODE=offline $(BIN)/pytest
