"""Runs on Flower's Simulation Engine (Ray) in this process: reproducibility."""

from __future__ import annotations

import numpy as np
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from fl_iot.cli import run_study
from fl_iot.client_app import build_client_app
from fl_iot.run_config import compose_config
from fl_iot.server import run_server
from tests.in_process_grid import InProcessGrid

TINY_SAMPLED = (
    "scenario.num_devices=6",
    "scenario.num_rounds=2",
    "scenario.fraction_train=0.5",
    "scenario.fraction_evaluate=0.5",
)


def config(*overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    return compose_config((*TINY_SAMPLED, *overrides))


def test_same_seed_gives_the_same_result_on_ray_as_in_process(tmp_path):
    """Same seed, same result: on Ray (2 workers, replies in any order) and in one process.

    Equality across engines is a stronger check than two Ray runs: nothing the result depends on
    may come from scheduling, arrival order or process state.
    """
    cfg = config("tracking.sinks=[summary,checkpoint]")
    on_ray = run_study(cfg, tmp_path / "ray")
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(resolved, DictConfig)
    grid = InProcessGrid(build_client_app(lambda _: resolved), resolved.scenario.num_devices)
    in_process = run_server(grid, resolved, tmp_path / "local").summary

    for part in ("central", "federated", "train"):
        assert on_ray["final"][part] == in_process["final"][part]
    model_ray = torch.load(tmp_path / "ray" / "model.pt", weights_only=True)
    model_local = torch.load(tmp_path / "local" / "model.pt", weights_only=True)
    for key in model_ray:
        np.testing.assert_array_equal(model_ray[key].numpy(), model_local[key].numpy())
