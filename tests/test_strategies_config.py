"""The Hydra strategy configs build the strategies they promise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flwr.serverapp.strategy import FedAvg
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from strategies import AnomalyRejection, ReliabilityTracker, ReliabilityWeightedFedAvg

CONF = Path(__file__).resolve().parent.parent / "conf"
ROOT: dict[str, Any] = {
    "seed": 7,
    "scenario": {
        "fraction_train": 0.5,
        "fraction_evaluate": 0.25,
        "min_train_devices": 4,
        "min_evaluate_devices": 3,
    },
}


def _build(name: str) -> object:
    """The strategy of `conf/strategy/<name>.yaml`, composed as `fl-iot` does, under ``ROOT``."""
    from fl_iot.config import register_configs

    register_configs()  # the strategy/thresholds node
    overrides = [f"strategy={name}", f"seed={ROOT['seed']}"]
    overrides += [f"scenario.{key}={value}" for key, value in ROOT["scenario"].items()]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return instantiate(compose(config_name="config", overrides=overrides).strategy)


def test_trusted_is_anomaly_rejection_around_reliability_fedavg_with_one_tracker() -> None:
    strategy = _build("trusted")
    assert isinstance(strategy, AnomalyRejection)
    inner = strategy.strategy
    assert isinstance(inner, ReliabilityWeightedFedAvg)
    assert isinstance(inner.tracker, ReliabilityTracker)
    assert strategy.tracker is inner.tracker
    # sampling interpolated from the scenario, seed from the root
    assert (inner.fraction_train, inner.fraction_evaluate) == (0.5, 0.25)
    assert (inner.min_train_nodes, inner.min_evaluate_nodes) == (4, 3)
    assert strategy.seed == inner.seed == 7
    assert strategy.thresholds.norm_threshold == 4.0 and inner.quantity_cap == 3.0


def test_reliability_is_weighting_only() -> None:
    strategy = _build("reliability")
    assert type(strategy) is ReliabilityWeightedFedAvg
    assert strategy.tracker.decay == 0.9 and strategy.seed == 7


def test_trusted_fedavg_wraps_flowers_fedavg() -> None:
    strategy = _build("trusted_fedavg")
    assert isinstance(strategy, AnomalyRejection) and type(strategy.strategy) is FedAvg


@pytest.mark.parametrize("name", ["trusted", "reliability", "trusted_fedavg"])
def test_composes_with_the_project_root_config(name: str) -> None:
    # The whole fl-iot config, as `fl-iot strategy=<name>` composes it.
    from fl_iot.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=[f"strategy={name}"])
    strategy = instantiate(cfg.strategy)
    assert isinstance(strategy, AnomalyRejection | ReliabilityWeightedFedAvg)
