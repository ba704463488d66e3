"""Local DP across a fleet, through the real ClientApp in process: epsilon per round and class,
budget exhaustion reported as declined rounds, and fleets mixing private and non-private devices."""

from __future__ import annotations

import json

from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from fl_iot.client_app import build_client_app
from fl_iot.run_config import compose_config
from fl_iot.server import run_server
from tests.in_process_grid import InProcessGrid


def run(tmp_path, *overrides: str):
    GlobalHydra.instance().clear()
    cfg = compose_config(
        (
            "scenario.num_devices=4",
            "scenario.num_rounds=3",
            "scenario.fraction_train=1.0",
            "scenario.fraction_evaluate=0.5",
            "tracking.sinks=[jsonl,summary]",
            *overrides,
        )
    )
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(resolved, DictConfig)
    grid = InProcessGrid(build_client_app(lambda _: resolved), 4)
    summary = run_server(grid, resolved, tmp_path).summary.to_dict()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return summary, records


def test_private_fleet_reports_growing_epsilon_within_each_class_budget(tmp_path):
    summary, records = run(tmp_path, "privacy=local_dp")

    epsilons = [r["privacy"]["epsilon-max"] for r in records]
    assert epsilons == sorted(epsilons) and epsilons[0] > 0
    assert records[-1]["privacy"]["private-devices"] == 4
    for record in records:
        for device_class, stats in record["by_class"].items():
            target = 3.0 if device_class == "wearable" else 6.0  # conf/device profiles
            assert 0 < stats["epsilon_max"] <= target
    assert summary["privacy"]["epsilon-max"] == epsilons[-1]
    assert summary["errors"] == []


def test_a_fleet_mixing_private_and_standard_devices_aggregates_every_round(tmp_path):
    summary, records = run(tmp_path, "device_classes.wearable.trainer=dp-sgd")

    assert summary["errors"] == []
    assert summary["clients"]["replied"] == 12
    private = [d for d in records[0]["devices"].values() if d["device_class"] == "wearable"]
    standard = [d for d in records[0]["devices"].values() if d["device_class"] == "smartphone"]
    assert all("epsilon" in d for d in private) and private
    assert all("epsilon" not in d for d in standard) and standard


def test_devices_out_of_budget_decline_and_are_counted(tmp_path):
    # A fixed, small noise multiplier against a tight budget: the budget runs out mid-run.
    summary, records = run(
        tmp_path,
        "privacy=local_dp",
        "device_classes.wearable.privacy.noise_multiplier=0.6",
        "device_classes.wearable.privacy.target_epsilon=2.0",
    )

    assert summary["status"] == "completed"
    assert summary["clients"]["declined"] > 0
    assert summary["clients"]["failed"] == 0
    for record in records:
        assert record["by_class"].get("wearable", {}).get("epsilon_max", 0.0) <= 2.0
    declined = [d for r in records for d in r["devices"].values() if "error" in d]
    assert all("budget" in d["error"] for d in declined)
