"""The device classes' privacy profiles, and switching DP-SGD on through the config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from hydra.core.global_hydra import GlobalHydra

from clients.dp_trainer import EPSILON
from clients.privacy import PrivacyLedger, PrivacyProfile
from fl_iot.run_config import compose_config

DEVICE_DIR = Path(__file__).resolve().parent.parent / "conf" / "device"
CLASSES = (
    "wearable",
    "smartphone",
    "vehicle_ecu",
    "industrial_gateway",
    "home_hub",
    "microcontroller_sensor",
)


@pytest.fixture(autouse=True)
def _fresh_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("name", CLASSES)
def test_every_device_class_has_a_valid_budgeted_profile_and_defaults_to_standard(name):
    values = yaml.safe_load((DEVICE_DIR / f"{name}.yaml").read_text())
    profile = PrivacyProfile.from_mapping(values["privacy"])
    assert values["trainer"] == "standard", "DP is switched on per experiment"
    assert profile.target_epsilon is not None and 1.0 <= profile.target_epsilon <= 10.0
    assert profile.delta <= 1e-5, "delta must stay far below 1 / (local samples)"
    assert profile.noise_multiplier is None, "noise is calibrated from the target"


def test_health_data_gets_the_strictest_budget():
    budgets = {
        name: yaml.safe_load((DEVICE_DIR / f"{name}.yaml").read_text())["privacy"]["target_epsilon"]
        for name in CLASSES
    }
    assert budgets["wearable"] == min(budgets.values())


def test_dp_sgd_is_switched_on_per_class_by_an_override():
    cfg = compose_config(tuple(f"device_classes.{name}.trainer=dp-sgd" for name in CLASSES))
    assert {cfg.device_classes[name].trainer for name in CLASSES} == {"dp-sgd"}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_wearable_accumulates_epsilon_through_the_device_runtime():
    # The core's device runtime with the DP trainer switched on: the state object it is given
    # is what Flower persists as context.state, and the reply carries epsilon.
    from fl_iot.device_runtime import fresh_model, run_context, train_on_device

    cfg = compose_config(
        (
            "device_classes.wearable.trainer=dp-sgd",
            "device_classes.smartphone.trainer=dp-sgd",
            "device_classes.wearable.max_steps=3",
            "device_classes.smartphone.max_steps=3",
        )
    )
    run = run_context(cfg)
    device = run.federation[0]
    state = RecordDict()
    arrays = ArrayRecord(fresh_model(run).state_dict())
    epsilons = []
    for server_round in (1, 2):
        content = RecordDict(
            {"arrays": arrays, "config": ConfigRecord({"server-round": server_round})}
        )
        reply = train_on_device(cfg, device.device_id, content, state)
        epsilons.append(float(reply["trainer"][EPSILON]))  # type: ignore[index]
        arrays = reply["arrays"]  # type: ignore[assignment]

    profile = cfg.device_classes[device.device_class].privacy
    assert 0 < epsilons[0] < epsilons[1] <= profile.target_epsilon
    assert PrivacyLedger.load(state).steps == 6
    weights = arrays.to_torch_state_dict()  # type: ignore[attr-defined]
    assert set(weights) == set(fresh_model(run).state_dict())
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert np.isfinite(epsilons).all()
