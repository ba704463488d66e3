"""Shared test set-up: offline Flower and W&B, and the location of the real datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put every ``e2e`` test in one pytest-xdist group: they run on one worker, in turn.

    Each starts Ray, a Flower server or a whole ``fl-iot`` run that wants the machine's cores;
    the quick tests spread over the other workers.
    """
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(pytest.mark.xdist_group("e2e"))


SHARED_DATA = Path(os.environ.get("FL_IOT_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """The directory holding the real datasets (``mitbih``, ``cmapss``, ``occupancy``).

    CI finds them at ``../shared/data``; elsewhere set ``FL_IOT_DATA_ROOT``. Tests that need them
    are skipped, with the reason, on a machine that has neither.
    """
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}; set FL_IOT_DATA_ROOT")
    return SHARED_DATA
