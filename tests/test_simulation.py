"""Runs on Flower's Simulation Engine (Ray) in this process: reproducibility, a kept session."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import ray
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from fl_iot import simulation
from fl_iot.cli import run_study
from fl_iot.client_app import build_client_app
from fl_iot.run_config import compose_config
from fl_iot.server import run_server
from fl_iot.simulation import stop_kept_ray_session
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


@pytest.mark.e2e
def test_same_seed_gives_the_same_result_on_ray_as_in_process(tmp_path, caplog):
    """Same seed, same result: on Ray (2 workers, replies in any order) and in one process.

    Equality across engines is a stronger check than two Ray runs: nothing the result depends on
    may come from scheduling, arrival order or process state. The second Ray run reuses the Ray
    session the first one kept up (``engine.keep_ray_alive``), as a multirun's next job does.
    """
    cfg = config("tracking.sinks=[summary,checkpoint]")
    try:
        on_ray = run_study(cfg, tmp_path / "ray")
        assert ray.is_initialized()  # kept up for the next run
        with caplog.at_level(logging.INFO, logger="fl_iot.simulation"):
            on_kept_ray = run_study(cfg, tmp_path / "ray_again")
        assert "reusing the Ray session" in caplog.text
    finally:
        stop_kept_ray_session()
    assert not ray.is_initialized()
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(resolved, DictConfig)
    grid = InProcessGrid(build_client_app(lambda _: resolved), resolved.scenario.num_devices)
    in_process = run_server(grid, resolved, tmp_path / "local").summary.to_dict()

    for part in ("central", "federated", "train"):
        assert on_ray["final"][part] == in_process["final"][part]
        assert on_kept_ray["final"][part] == in_process["final"][part]
    model_local = torch.load(tmp_path / "local" / "model.pt", weights_only=True)
    for run in ("ray", "ray_again"):
        model_ray = torch.load(tmp_path / run / "model.pt", weights_only=True)
        for key in model_ray:
            np.testing.assert_array_equal(model_ray[key].numpy(), model_local[key].numpy())


@pytest.mark.e2e
def test_an_unreliable_fleet_in_buffered_rounds_is_reproducible_on_ray(tmp_path):
    """FedBuff over a realistic fleet gives the same model and clock on Ray as in process.

    What is on time, late or stale is decided on the simulated clock from measured bytes, never
    from the order in which Ray's workers happen to reply.
    """
    cfg = config(
        "fleet=realistic",
        "rounds=fedbuff",
        "rounds.buffer_size=2",
        "strategy=trusted",
        "scenario.num_rounds=3",
        "engine.keep_ray_alive=false",
        "tracking.sinks=[jsonl,summary,checkpoint]",
    )
    on_ray = run_study(cfg, tmp_path / "ray")
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(resolved, DictConfig)
    grid = InProcessGrid(build_client_app(lambda _: resolved), resolved.scenario.num_devices)
    in_process = run_server(grid, resolved, tmp_path / "local").summary.to_dict()

    assert on_ray["final"]["central"] == in_process["final"]["central"]
    clocks = [
        [
            line.split('"clock_s": ')[1].split(",")[0]
            for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        ]
        for run in ("ray", "local")
    ]
    assert clocks[0] == clocks[1]
    model_ray = torch.load(tmp_path / "ray" / "model.pt", weights_only=True)
    model_local = torch.load(tmp_path / "local" / "model.pt", weights_only=True)
    for key in model_ray:
        np.testing.assert_array_equal(model_ray[key].numpy(), model_local[key].numpy())


class FakeRay:
    """Just what ``ray_session`` touches of the ``ray`` module: is it up, and shut it down."""

    def __init__(self) -> None:
        self.up = False
        self.shutdowns = 0

    def is_initialized(self) -> bool:
        return self.up

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.up = False


@pytest.fixture
def fake_ray(monkeypatch):
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(simulation, "_kept_ray_init_args", None)
    return fake


def run_like_flower(fake: FakeRay) -> None:
    """What Flower's Ray backend does in one run: start Ray if it is down, shut it down after."""
    fake.up = True
    sys.modules["ray"].shutdown()


ARGS = {"num_cpus": 2, "log_to_driver": False}


def test_a_kept_session_serves_the_next_run_with_the_same_init_args(fake_ray, caplog):
    with simulation.ray_session(ARGS, keep_alive=True):
        run_like_flower(fake_ray)
    assert fake_ray.up and fake_ray.shutdowns == 0
    with (
        caplog.at_level(logging.INFO, logger="fl_iot.simulation"),
        simulation.ray_session(dict(ARGS), keep_alive=True),
    ):
        run_like_flower(fake_ray)
    assert "reusing the Ray session" in caplog.text
    assert fake_ray.up and fake_ray.shutdowns == 0
    assert fake_ray.shutdown == FakeRay.shutdown.__get__(fake_ray)  # Flower's shutdown restored


def test_other_init_args_or_keep_alive_off_get_a_fresh_session(fake_ray):
    with simulation.ray_session(ARGS, keep_alive=True):
        run_like_flower(fake_ray)
    with simulation.ray_session({**ARGS, "num_cpus": 1}, keep_alive=True):
        assert not fake_ray.up and fake_ray.shutdowns == 1  # the kept one is gone
        run_like_flower(fake_ray)
    with simulation.ray_session(ARGS, keep_alive=False):
        assert fake_ray.shutdowns == 2
        run_like_flower(fake_ray)  # Flower's own shutdown runs
    assert not fake_ray.up and fake_ray.shutdowns == 3
    simulation.stop_kept_ray_session()
    assert fake_ray.shutdowns == 3  # nothing was kept


def test_a_failed_run_shuts_its_session_down(fake_ray):
    with (
        pytest.raises(RuntimeError, match="actor died"),
        simulation.ray_session(ARGS, keep_alive=True),
    ):
        fake_ray.up = True
        raise RuntimeError("actor died")
    assert not fake_ray.up and fake_ray.shutdowns == 1
    assert simulation._kept_ray_init_args is None


@pytest.mark.e2e
def test_a_run_behind_gateways_on_ray_ends_with_the_model_of_one_node_per_device(tmp_path):
    """3 gateway nodes of 2 devices on Ray, trusted aggregation: the model, scores and per-device
    records of the same run with one in-process node per device."""
    cfg = config("strategy=trusted", "tracking.sinks=[jsonl,summary,checkpoint]")
    gated_cfg = config(
        "strategy=trusted",
        "tracking.sinks=[jsonl,summary,checkpoint]",
        "gateways.devices_per_gateway=2",
    )
    try:
        on_ray = run_study(gated_cfg, tmp_path / "ray")
    finally:
        stop_kept_ray_session()
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(resolved, DictConfig)
    grid = InProcessGrid(build_client_app(lambda _: resolved), resolved.scenario.num_devices)
    direct = run_server(grid, resolved, tmp_path / "local")
    assert on_ray["clients"] == direct.summary.to_dict()["clients"]
    for part in ("central", "federated", "train"):
        assert on_ray["final"][part] == direct.summary.to_dict()["final"][part]
    on_ray_model = torch.load(tmp_path / "ray" / "model.pt", weights_only=True)
    for key, value in direct.arrays.to_torch_state_dict().items():
        np.testing.assert_array_equal(on_ray_model[key].numpy(), value.numpy())
