"""Attacks through the device runtime and the real ClientApp, in process (no Ray).

The default scenario, tiny: 6 devices, 2 rounds, a third of them attacking.
"""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from clients import build_attack
from clients.attacks import COLLUSION_CACHE, alie_update, alie_z
from fl_iot import protocol as P
from fl_iot.client_app import build_client_app
from fl_iot.config import attackers_per_round, devices_per_round
from fl_iot.device_runtime import local_update, run_context, train_on_device
from fl_iot.run_config import compose_config
from fl_iot.server import initial_arrays, run_server
from tests.in_process_grid import InProcessGrid


def tiny(attack: str, *overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    cfg = compose_config(
        (
            "scenario.num_devices=6",
            "scenario.num_rounds=2",
            "tracking.sinks=[jsonl,summary]",
            f"attack={attack}",
            "attack.fraction=0.34",
            *overrides,
        )
    )
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(resolved, DictConfig)
    return resolved


def round_one(cfg: DictConfig) -> tuple[ArrayRecord, ConfigRecord, RecordDict]:
    arrays = initial_arrays(run_context(cfg))
    config = ConfigRecord({P.SERVER_ROUND: 1})
    return arrays, config, RecordDict({P.ARRAYS: arrays, P.CONFIG: config})


def honest(cfg: DictConfig, device_id: int, arrays: ArrayRecord, config: ConfigRecord):
    run = run_context(cfg)
    local, _ = local_update(run, run.federation[device_id], arrays, config, RecordDict())
    return local


def reply_arrays(reply: RecordDict) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply[P.ARRAYS].items()}  # type: ignore[union-attr]


def as_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


@pytest.fixture(autouse=True)
def fresh_collusion_cache():
    COLLUSION_CACHE.clear()
    yield
    COLLUSION_CACHE.clear()


def test_alie_colluders_send_one_crafted_update_reconstructed_from_honest_training():
    cfg = tiny("alie")
    run = run_context(cfg)
    colluders = sorted(run.federation.attackers)
    assert len(colluders) == 2
    arrays, config, content = round_one(cfg)

    # Each colluder on its own worker (empty cache), then both on one worker.
    alone = []
    for device_id in colluders:
        COLLUSION_CACHE.clear()
        alone.append(reply_arrays(train_on_device(cfg, device_id, content, RecordDict())))
    COLLUSION_CACHE.clear()
    together = [
        reply_arrays(train_on_device(cfg, d, content, RecordDict()))
        for d in (colluders[1], colluders[0])
    ]
    assert (COLLUSION_CACHE.misses, COLLUSION_CACHE.hits) == (1, 1)

    # mu - z * sigma over the colluders' honest updates, z = z_max(n, f) for n devices per
    # round (3 of the 6) and f attackers expected among them (1).
    global_np = as_numpy(arrays)
    updates = [
        {k: v.astype(np.float64) - global_np[k] for k, v in honest(cfg, d, arrays, config).items()}
        for d in colluders
    ]
    n, f = devices_per_round(cfg), attackers_per_round(_root_=cfg)
    assert (n, f) == (3, 1)
    crafted = alie_update(updates, alie_z(n, f))
    for key, value in global_np.items():
        expected = (value + crafted[key]).astype(value.dtype)
        for sent in [*alone, *together]:
            np.testing.assert_array_equal(sent[key], expected)


def test_honest_devices_are_untouched_and_weight_inflation_lies_about_the_count():
    cfg = tiny("weight_inflation")
    run = run_context(cfg)
    attacker = min(run.federation.attackers)
    honest_device = min(set(range(6)) - run.federation.attackers)
    arrays, config, content = round_one(cfg)

    for device_id in (attacker, honest_device):
        reply = train_on_device(cfg, device_id, content, RecordDict())
        train_size = len(run.data.device_split(device_id)[0])
        factor = 100 if device_id == attacker else 1
        assert reply[P.METRICS][P.NUM_EXAMPLES] == train_size * factor  # type: ignore[index]
        for key, value in honest(cfg, device_id, arrays, config).items():
            np.testing.assert_array_equal(reply_arrays(reply)[key], value)


def test_label_flip_attackers_train_on_flipped_labels():
    cfg = tiny("label_flip")
    run = run_context(cfg)
    attacker = min(run.federation.attackers)
    arrays, config, content = round_one(cfg)

    sent = reply_arrays(train_on_device(cfg, attacker, content, RecordDict()))
    poisoned, _ = local_update(
        run, run.federation[attacker], arrays, config, RecordDict(), build_attack("label_flip")
    )
    truthful = honest(cfg, attacker, arrays, config)

    for key in sent:
        np.testing.assert_array_equal(sent[key], poisoned[key])
    assert any(not np.array_equal(sent[k], truthful[k]) for k in sent)


class RecordingFedAvg(FedAvg):
    """FedAvg that keeps every train reply it aggregates."""

    received: ClassVar[list[tuple[int, Message]]] = []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        RecordingFedAvg.received += [(server_round, r) for r in replies]
        return super().aggregate_train(server_round, replies)


def test_sign_flip_end_to_end_the_strategy_receives_flipped_updates(tmp_path):
    cfg = tiny("sign_flip", f"strategy._target_={__name__}.RecordingFedAvg")
    run = run_context(cfg)
    RecordingFedAvg.received = []
    grid = InProcessGrid(build_client_app(lambda _: cfg), 6)

    summary = run_server(grid, cfg, tmp_path).summary.to_dict()

    assert summary["status"] == "completed"
    sent_global = {
        int(m.content[P.CONFIG][P.SERVER_ROUND]): m.content  # type: ignore[index]
        for m in grid.sent
        if m.metadata.message_type == "train"
    }
    seen = {"attacker": 0, "honest": 0}
    for server_round, reply in RecordingFedAvg.received:
        device_id = int(reply.content[P.DEVICE][P.DEVICE_ID])  # type: ignore[index]
        arrays = sent_global[server_round][P.ARRAYS]
        config = sent_global[server_round][P.CONFIG]
        truthful = honest(cfg, device_id, arrays, config)  # type: ignore[arg-type]
        attacker = device_id in run.federation.attackers
        seen["attacker" if attacker else "honest"] += 1
        for key, value in as_numpy(arrays).items():  # type: ignore[arg-type]
            expected = value - (truthful[key] - value) if attacker else truthful[key]
            np.testing.assert_allclose(
                reply.content[P.ARRAYS][key].numpy(),  # type: ignore[index]
                expected,
                rtol=1e-6,
                atol=1e-6,
            )
    assert seen["attacker"] >= 1 and seen["honest"] >= 1
    # metrics.jsonl marks who attacked.
    rounds = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    marked = {
        int(d)
        for r in rounds
        for d, entry in r["devices"].items()
        if entry.get("attacker") and "num-examples" in entry
    }
    assert marked and marked <= run.federation.attackers


def test_trusted_reports_the_weight_attackers_kept(tmp_path):
    # Sign flippers are down-weighted or rejected: the share of the aggregate they kept, per round
    # in metrics.jsonl and averaged in summary.json, is what a defence let through.
    cfg = tiny("sign_flip", "strategy=trusted")

    summary = run_server(
        InProcessGrid(build_client_app(lambda _: cfg), 6), cfg, tmp_path
    ).summary.to_dict()

    rounds = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    per_round = [r["detection"]["attacker_weight"] for r in rounds]
    for r, weight in zip(rounds, per_round, strict=True):
        attackers = [d for d, v in r["devices"].items() if v.get("attacker")]
        expected = sum(
            r["strategy"]["devices"][d]["weight"]
            for d in attackers
            if d in r["strategy"]["devices"]
        )
        assert weight == pytest.approx(expected)
        assert 0.0 <= weight < 1.0
    assert summary["detection"]["attacker_weight"] == pytest.approx(np.mean(per_round))


def test_trusted_caps_an_inflated_count_instead_of_rejecting_the_update(tmp_path):
    # strategy=trusted keeps a weight-inflating device's (honest) update and bounds its claimed
    # count to quantity_cap × the round's median (conf/strategy/trusted.yaml, max_count_ratio).
    cfg = tiny("weight_inflation", "strategy=trusted", "scenario.fraction_train=1.0")
    run = run_context(cfg)
    cap = cfg.strategy.strategy.quantity_cap
    assert cap < 10

    run_server(InProcessGrid(build_client_app(lambda _: cfg), 6), cfg, tmp_path)

    rounds = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(run.federation.attackers) == 2 and len(rounds) == 2
    for r in rounds:
        devices = r["strategy"]["devices"]
        accepted = [v for v in devices.values() if v["status"] == "accepted"]
        median = float(np.median([v["num_examples"] for v in accepted]))
        # An update may still be refused for what it is (direction, norm), never for the count.
        assert not any("sample count" in why for why in r["strategy"]["rejected"].values())
        liars = [devices[str(d)] for d in run.federation.attackers]
        assert all(v["num_examples"] > 10 * median for v in liars)  # 100× its training split
        kept = [v for v in liars if v["status"] == "accepted"]
        assert kept
        for entry in kept:
            assert entry["quantity"] == pytest.approx(cap * median)  # what the lie buys
