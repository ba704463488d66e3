"""The one boundary between Flower's run-config and Hydra's config.

Flower's run-config (``[tool.flwr.app.config]`` in ``pyproject.toml``, ``flwr run --run-config``)
is flat, kebab-case and scalar-only; Hydra's is nested and snake_case. Under ``flwr run`` the
ServerApp and every ClientApp compose the Hydra config from ``conf/`` (shipped inside the app
bundle) with overrides built here::

    scenario = "healthcare_wearables"   ->  scenario=healthcare_wearables
    strategy = "trusted"                ->  strategy=trusted
    attack = "none"                     ->  attack=none
    privacy = "none"                    ->  privacy=none
    tracking = "local"                  ->  tracking=local
    seed = 0                            ->  seed=0
    data-root = "/data"                 ->  scenario.dataset.root=/data
    overrides = "scenario.num_rounds=3 scenario.num_devices=4"   (any Hydra overrides)

``output-dir`` and ``server-data`` are not part of the Hydra config; they tell the ServerApp
where to write results and where its share of the data is:

``server-data = "/data/export/server"``
    The ServerApp reads only the server's share that ``fl-iot-export`` wrote (the central test
    split and every device's sizes, :mod:`fl_iot.data.export`) instead of loading and
    partitioning the whole dataset; empty (the default): it loads the dataset. It must be an
    export of this run's partition (same scenario dataset, ``scenario.num_devices`` and
    ``seed``); another is refused, naming what differs. Each SuperNode then holds its own
    device's export, named by its node-config: ``--node-config "device-id=3
    data-path=/data/export/device-3"`` (:data:`fl_iot.device_runtime.DATA_PATH_KEY`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

SERVER_DATA_KEY = "server-data"
"""Run-config key of the directory holding the server's exported share of the data."""

GROUP_KEYS = ("scenario", "strategy", "attack", "tracking", "privacy")
"""Run-config keys that select a Hydra config group option."""


def hydra_overrides(run_config: Mapping[str, object]) -> list[str]:
    """Translate a Flower run-config into Hydra override strings."""
    overrides = [f"{key}={run_config[key]}" for key in GROUP_KEYS if run_config.get(key)]
    if run_config.get("seed") not in (None, ""):
        overrides.append(f"seed={run_config['seed']}")
    if run_config.get("data-root"):
        overrides.append(f"scenario.dataset.root={run_config['data-root']}")
    overrides += shlex.split(str(run_config.get("overrides") or ""))
    return overrides


def compose_config(overrides: tuple[str, ...] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` outside a Hydra app, and validate it."""
    return _compose_cached(tuple(overrides))


@lru_cache(maxsize=8)
def _compose_cached(overrides: tuple[str, ...]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fl_iot.config import register_configs, validate_config

    register_configs()
    if GlobalHydra.instance().is_initialized():
        # compose() inside a running Hydra app: reuse its config search path.
        cfg = compose(config_name="config", overrides=list(overrides))
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name="config", overrides=list(overrides))
    validate_config(cfg)
    return cfg


def config_from_run_config(run_config: Mapping[str, object]) -> DictConfig:
    """The composed, validated Hydra config a ``flwr run`` asks for."""
    overrides = hydra_overrides(run_config)
    choices = [f"+choices.{key}={run_config[key]}" for key in GROUP_KEYS if run_config.get(key)]
    return compose_config(tuple(overrides + choices))
