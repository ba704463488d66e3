"""The structured schema: scenarios get exactly their fleet."""

from __future__ import annotations

import copy

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from fl_iot import config as schema
from fl_iot.federation import build_federation
from fl_iot.run_config import CONF_DIR, compose_config


@pytest.fixture(autouse=True)
def _fresh_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def compose(*overrides: str) -> DictConfig:
    """A composed config of our own: compose_config returns one cached object per overrides."""
    GlobalHydra.instance().clear()
    return copy.deepcopy(compose_config(tuple(overrides)))


SCENARIOS = sorted(p.stem for p in (CONF_DIR / "scenario").glob("*.yaml"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_scenario_fleet_is_exactly_the_mix_its_yaml_names(scenario):
    own_mix = yaml.safe_load((CONF_DIR / "scenario" / f"{scenario}.yaml").read_text())["device_mix"]
    cfg = compose(f"scenario={scenario}")

    assert OmegaConf.to_container(cfg.scenario.device_mix) == own_mix
    keys = [f"device-{i}" for i in range(cfg.scenario.num_devices)]
    federation = build_federation(keys, dict(cfg.scenario.device_mix), 0.0, cfg.seed)
    assert set(federation.class_counts()) <= {name for name, share in own_mix.items() if share}
    assert sum(federation.class_counts().values()) == cfg.scenario.num_devices


def test_the_schema_has_no_default_mix_to_merge_into_a_scenario():
    assert OmegaConf.is_missing(OmegaConf.structured(schema.ScenarioConfig), "device_mix")
