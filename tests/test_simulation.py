"""Runs on Flower's Simulation Engine (Ray) in this process: reproducibility and W&B."""

from __future__ import annotations

import json

import numpy as np
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from fl_iot.cli import run_study
from fl_iot.run_config import compose_config
from tests.wandb_records import offline_run

TINY_SAMPLED = (
    "scenario.num_devices=6",
    "scenario.num_rounds=2",
    "scenario.fraction_train=0.5",
    "scenario.fraction_evaluate=0.5",
)


def config(*overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    return compose_config((*TINY_SAMPLED, *overrides))


def test_same_seed_gives_the_same_final_metrics_and_model(tmp_path):
    first = run_study(config("tracking.sinks=[summary,checkpoint]"), tmp_path / "a")
    second = run_study(config("tracking.sinks=[summary,checkpoint]"), tmp_path / "b")

    for part in ("central", "federated", "train"):
        assert first["final"][part] == second["final"][part]
    import torch

    model_a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    model_b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    for key in model_a:
        np.testing.assert_array_equal(model_a[key].numpy(), model_b[key].numpy())


def test_wandb_offline_run_holds_config_rounds_and_summary(tmp_path):
    summary = run_study(config("tracking=wandb", "tracking.wandb.group=study-7"), tmp_path)
    rounds = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]

    logged = offline_run(tmp_path)

    assert logged["group"] == "study-7"
    assert logged["config"]["scenario"]["name"] == "healthcare_wearables"
    assert logged["config"]["seed"] == 0
    assert sorted(logged["history"]) == [1, 2]
    for record in rounds:
        row = logged["history"][record["round"]]
        assert row["central/accuracy"] == record["central"]["accuracy"]
        assert row["federated/macro_f1"] == record["federated"]["macro_f1"]
        assert row["clients/replied"] == record["replied"]
    assert logged["summary"]["final/central/macro_f1"] == summary["final"]["central"]["macro_f1"]
    assert logged["summary"]["status"] == "completed"
