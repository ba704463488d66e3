"""The server's round loop against real ClientApps in this process (no Ray)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from flwr.app import Message
from flwr.serverapp.strategy import FedAvg
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from fl_iot.client_app import build_client_app
from fl_iot.federation import build_federation
from fl_iot.round_loop import detection_scores
from fl_iot.run_config import compose_config
from fl_iot.server import run_server
from tests.in_process_grid import InProcessGrid, set_task_identity


def tiny_config(*overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    cfg = compose_config(
        (
            "scenario.num_devices=6",
            "scenario.num_rounds=2",
            "scenario.fraction_train=0.5",
            "tracking.sinks=[jsonl,summary]",
            *overrides,
        )
    )
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(resolved, DictConfig)
    return resolved


def run(cfg: DictConfig, tmp_path, fault=None):
    grid = InProcessGrid(build_client_app(lambda _: cfg), cfg.scenario.num_devices, fault)
    return run_server(grid, cfg, tmp_path), grid


def test_a_run_samples_trains_evaluates_and_summarises(tmp_path):
    result, _ = run(tiny_config(), tmp_path)
    summary = result.summary.to_dict()

    assert summary["status"] == "completed"
    assert summary["rounds_completed"] == 2
    assert summary["clients"] == {
        "sampled": 6,
        "replied": 6,
        "failed": 0,
        "declined": 0,
        "missing": 0,
    }
    assert set(summary["final"]["central"]) == {"accuracy", "macro_f1", "balanced_accuracy", "loss"}
    assert summary["final"]["federated"]["num_examples"] > 0


def test_same_seed_samples_the_same_devices_and_gives_the_same_model(tmp_path):
    first, grid_a = run(tiny_config(), tmp_path / "a")
    second, grid_b = run(tiny_config(), tmp_path / "b")
    _other, grid_c = run(tiny_config("seed=1"), tmp_path / "c")

    def sampled_partitions(grid):
        return [
            grid.contexts[m.metadata.dst_node_id].node_config["partition-id"]
            for m in grid.sent
            if m.metadata.message_type == "train"
        ]

    assert sampled_partitions(grid_a) == sampled_partitions(grid_b)
    assert sampled_partitions(grid_a) != sampled_partitions(grid_c)
    for key, array in first.arrays.items():
        np.testing.assert_array_equal(array.numpy(), second.arrays[key].numpy())
    for part in ("central", "federated", "train"):  # by_class holds wall-clock compute times
        assert getattr(first.summary.final, part) == getattr(second.summary.final, part)


def test_failed_and_silent_devices_are_counted_and_the_run_goes_on(tmp_path):
    cfg = tiny_config("scenario.fraction_train=1.0")

    def fault(partition_id: int, message: Message) -> str | None:
        if message.metadata.message_type != "train":
            return None
        return {1: "error", 2: "silent"}.get(partition_id)

    result, _ = run(cfg, tmp_path, fault)
    summary = result.summary.to_dict()

    assert summary["status"] == "completed"
    assert summary["clients"] == {
        "sampled": 12,
        "replied": 8,
        "failed": 2,
        "declined": 0,
        "missing": 2,
    }
    records = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert '"error": "device crashed"' in records[0]


class ExplodingOnceFedAvg(FedAvg):
    """FedAvg whose first aggregation raises, as a buggy third-party strategy might."""

    def aggregate_train(self, server_round, replies):
        if server_round == 1:
            raise RuntimeError("boom")
        return super().aggregate_train(server_round, replies)


def test_a_strategy_that_raises_does_not_end_the_run(tmp_path):
    cfg = tiny_config(f"strategy._target_={__name__}.ExplodingOnceFedAvg")

    result, _ = run(cfg, tmp_path)
    summary = result.summary.to_dict()

    assert summary["status"] == "completed"
    assert summary["errors"] == ["round 1: aggregate_train: RuntimeError: boom"]
    # Round 1 kept the initial model, so its central loss equals the initial one.
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    import json

    round_1 = json.loads(lines[0])
    assert round_1["central"]["loss"] == pytest.approx(summary["initial_central"]["loss"])
    assert json.loads(lines[1])["central"]["loss"] != pytest.approx(round_1["central"]["loss"])


class RosterKeepingFedAvg(FedAvg):
    """FedAvg that keeps the roster the server gives it."""

    rosters: ClassVar[list[dict[int, str]]] = []

    def set_roster(self, roster):
        type(self).rosters.append(dict(roster))


def test_the_server_gives_the_roll_call_to_a_strategy_that_asks(tmp_path):
    RosterKeepingFedAvg.rosters.clear()
    cfg = tiny_config(f"strategy._target_={__name__}.RosterKeepingFedAvg")

    _, grid = run(cfg, tmp_path)

    partition = {n: c.node_config["partition-id"] for n, c in grid.contexts.items()}
    assert RosterKeepingFedAvg.rosters == [{n: str(p) for n, p in partition.items()}]


def test_detection_precision_and_recall_by_hand():
    set_task_identity()
    federation = build_federation([str(i) for i in range(4)], {"wearable": 1.0}, 0.5, seed=0)
    attackers = sorted(federation.attackers)
    honest = sorted(set(range(4)) - federation.attackers)
    participants = set(range(4))
    # Reject one attacker and one honest device: precision 1/2, recall 1/2.
    report = {"rejected": {str(attackers[0]): "far", str(honest[0]): "far"}}

    result = detection_scores(report, participants, federation)

    assert result == {
        "rejected": 2.0,
        "attackers": 2.0,
        "caught": 1.0,
        "precision": 0.5,
        "recall": 0.5,
    }
    assert detection_scores({}, participants, federation) == {}
    # A rejection of a node off the roster names no participating device.
    off_roster = {"rejected": {**report["rejected"], "node-1003": "not in the roster"}}
    assert detection_scores(off_roster, participants, federation) == result
    # With per-device weights, the attackers' summed share of the aggregate.
    weights = {attackers[0]: 0.0, attackers[1]: 0.05, honest[0]: 0.0, honest[1]: 0.95}
    report["devices"] = {str(d): {"weight": w} for d, w in weights.items()}
    assert detection_scores(report, participants, federation)["attacker_weight"] == 0.05


def test_forced_collections_are_skipped_during_aggregation_and_restored_after():
    import gc

    from fl_iot.round_loop import forced_gc_suppressed

    original = gc.collect
    with forced_gc_suppressed():
        assert gc.collect() == 0 and gc.collect is not original
    assert gc.collect is original
    with pytest.raises(RuntimeError), forced_gc_suppressed():
        raise RuntimeError("a strategy failed")
    assert gc.collect is original


def test_a_round_without_an_aggregate_is_reported(tmp_path):
    # Flower's Bulyan needs n >= 4f + 3 replies: with 6 of 12 devices and f = 1 it declines
    # (returns None without raising) every round, and the model stays at its initialisation.
    cfg = tiny_config(
        "strategy=bulyan",
        "strategy.num_malicious_nodes=1",
        "scenario.num_devices=12",
        "scenario.fraction_train=0.5",
    )
    result, _ = run(cfg, tmp_path)

    assert result.summary.status == "completed"
    assert result.summary.errors == [
        f"round {r}: aggregate_train: Bulyan returned no model (6 replies); the previous model "
        "is kept"
        for r in (1, 2)
    ]


def test_bulyan_aggregates_through_the_loop(tmp_path):
    cfg = tiny_config(
        "strategy=bulyan",
        "scenario.num_devices=12",
        "scenario.fraction_train=1.0",
        "scenario.num_rounds=2",
    )
    result, _ = run(cfg, tmp_path)

    assert result.summary.errors == []
    assert result.summary.clients.replied == 24
