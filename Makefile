# The two commands of the README quickstart:
#   make run    install everything, then run the default scenario (healthcare_wearables)
#   make test   install everything, then lint, type-check and run the test suite (what CI runs)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/install.sh
	bash scripts/install.sh
	touch $@

run: install
	$(BIN)/fl-iot

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 WANDB_MODE=offline $(BIN)/pytest
