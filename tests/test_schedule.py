"""Rounds on the simulated clock: sync, deadline and FedBuff over the in-process grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from omegaconf import open_dict

from fl_iot import protocol as P
from fl_iot.config import validate_config
from fl_iot.device_runtime import PARTIAL_ARRAYS, WentOfflineError, train_on_device
from fl_iot.errors import ConfigError
from fl_iot.fleet import DeviceConditions, ideal_fleet
from fl_iot.message_size import wire_bytes
from fl_iot.roster import Roster
from fl_iot.rounds import RoundMode, RoundsConfig, close_time, over_selected, staleness_weight
from fl_iot.run_config import compose_config
from fl_iot.schedule import PendingUpdate, RoundScheduler
from tests.in_process_grid import set_task_identity
from tests.test_round_loop import run, tiny_config


def rounds_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def used(record: dict) -> list[str]:
    """Devices whose update this round aggregated (on time, fresh or stale)."""
    return [d for d, e in record["devices"].items() if e.get("outcome") == "on_time"]


def test_an_ideal_sync_round_is_on_time_at_clock_zero_with_wire_bytes(tmp_path):
    run(tiny_config(), tmp_path)
    records = rounds_of(tmp_path)

    for record in records:
        assert record["fleet"]["clock_s"] == 0.0
        assert record["fleet"]["on_time"] == record["sampled"] == 3
        entries = [e for e in record["devices"].values() if "outcome" in e]
        # The MLP has 10,501 float32 parameters: the wire carries them and a little more.
        assert all(42_004 < e["bytes_down"] < 46_000 for e in entries)
        assert all(42_004 < e["bytes_up"] < 46_000 for e in entries)


def test_a_device_that_goes_quiet_makes_a_sync_round_wait_its_timeout(tmp_path):
    cfg = tiny_config(
        "fleet=realistic", "fleet.failure_rate=1.0", "rounds.timeout_s=300", "strategy=reliability"
    )
    run(cfg, tmp_path)
    records = rounds_of(tmp_path)

    assert [r["fleet"]["round_duration_s"] for r in records] == [300.0, 300.0]
    assert records[-1]["fleet"]["clock_s"] == 600.0
    for record in records:
        for entry in (e for e in record["devices"].values() if "outcome" in e):
            assert entry["outcome"] in {"failed", "offline"}
        failed = [d for d, e in record["devices"].items() if e.get("outcome") == "failed"]
        assert failed and set(failed) <= set(record["strategy"]["rejected"])


def test_a_deadline_round_over_selects_and_closes_at_its_target(tmp_path):
    cfg = tiny_config(
        "fleet=realistic", "rounds=deadline", "rounds.late_updates=drop", "scenario.num_rounds=3"
    )
    run(cfg, tmp_path)

    for record in rounds_of(tmp_path):
        asked = [e for e in record["devices"].values() if "sent_s" in e]
        assert len(asked) == over_selected(3, 1.3) == 4
        assert len(used(record)) <= 3
        assert record["fleet"]["round_duration_s"] <= 120.0


def test_late_deadline_updates_are_used_stale_in_a_later_round(tmp_path):
    cfg = tiny_config(
        "fleet=realistic",
        "rounds=deadline",
        "rounds.late_updates=stale",
        "rounds.over_selection=2.0",
        "scenario.num_rounds=4",
    )
    run(cfg, tmp_path)
    records = rounds_of(tmp_path)

    assert sum(r["fleet"]["stale_used"] for r in records) > 0
    stale = [e for r in records for e in r["devices"].values() if e.get("staleness")]
    assert stale and all(1 <= e["staleness"] <= 4 for e in stale)


def test_fedbuff_keeps_concurrency_and_aggregates_each_full_buffer(tmp_path):
    cfg = tiny_config(
        "fleet=realistic",
        "rounds=fedbuff",
        "rounds.buffer_size=2",
        "rounds.concurrency=4",
        "scenario.num_rounds=5",
        "strategy=trusted",
    )
    result, _ = run(cfg, tmp_path)
    records = rounds_of(tmp_path)

    assert result.summary.status == "completed"
    assert [len(used(r)) for r in records] == [2] * 5
    in_flight = [
        (r, d)
        for r in records
        for d, e in r["devices"].items()
        if "later round" in e.get("reason", "")
    ]
    assert in_flight  # devices still training when a buffer fills are not late to the strategy
    assert all(d not in r["strategy"]["late"] for r, d in in_flight)
    stale = [e["staleness"] for r in records for e in r["devices"].values() if "staleness" in e]
    assert stale and max(stale) <= 8
    clocks = [r["fleet"]["clock_s"] for r in records]
    assert clocks == sorted(clocks) and clocks[0] > 0


def test_a_partial_update_is_offered_later_and_used_stale(tmp_path):
    cfg = tiny_config(
        "fleet=realistic",
        "fleet.failure_rate=0.5",
        "rounds.partial_updates=use",
        "scenario.fraction_train=1.0",
        "scenario.num_rounds=4",
    )
    run(cfg, tmp_path)
    records = rounds_of(tmp_path)

    cut = {
        (r["round"], d)
        for r in records
        for d, e in r["devices"].items()
        if e.get("reason") == "failed mid-training"
    }
    offered = {
        (r["round"], d) for r in records for d, e in r["devices"].items() if e.get("staleness")
    }
    assert cut and offered
    for r in records:
        for e in r["devices"].values():
            if "started_s" in e:
                assert e["started_s"] == pytest.approx(e["sent_s"] + e["download_s"])
                went_off = e.get("reason") == "failed mid-training"
                full = e["started_s"] + e["compute_s"]
                assert e["finished_s"] < full if went_off else e["finished_s"] == full
    for server_round, device in offered:
        assert any(d == device and r < server_round for r, d in cut)


def test_a_stale_update_is_rebased_on_the_current_model_and_weighted():
    set_task_identity()
    scheduler = RoundScheduler(ideal_fleet([0]), RoundsConfig(), Roster({5: 0}), seed=0)
    scheduler.models = {
        1: ArrayRecord({"w": _array([0.0, 0.0]), "n": _array(np.array(2))}),
        4: ArrayRecord({"w": _array([1.0, 1.0]), "n": _array(np.array(6))}),
    }
    reply = Message(
        RecordDict(
            {
                P.ARRAYS: ArrayRecord({"w": _array([0.5, -0.5]), "n": _array(np.array(3))}),
                P.METRICS: MetricRecord({P.NUM_EXAMPLES: 100}),
            }
        ),
        dst_node_id=5,
        message_type="train",
    )
    pending = PendingUpdate(0, 5, base_round=1, reply=reply, arrival_s=0.0)
    rebased = scheduler._rebased(pending, 4, scheduler.models[4])

    arrays = rebased.content[P.ARRAYS]
    np.testing.assert_array_equal(arrays["w"].numpy(), [1.5, 0.5])
    assert arrays["n"].numpy().dtype == np.int64 and arrays["n"].numpy() == 7
    assert rebased.content[P.METRICS][P.NUM_EXAMPLES] == 50  # (1 + 3) ** -0.5 = 0.5


def _array(values):
    from flwr.app import Array

    return Array(np.asarray(values, dtype=np.float32 if isinstance(values, list) else None))


def test_close_time_and_staleness_rules():
    cfg = RoundsConfig(timeout_s=600.0, deadline_s=60.0)

    assert close_time(10.0, [], False, RoundMode.SYNC, cfg, 3) == 10.0
    assert close_time(10.0, [20.0, 15.0], False, RoundMode.DEADLINE, cfg, 3) == 20.0
    assert close_time(10.0, [20.0, 15.0], True, RoundMode.DEADLINE, cfg, 3) == 70.0
    assert close_time(10.0, [80.0, 15.0, 90.0], False, RoundMode.DEADLINE, cfg, 3) == 70.0
    assert close_time(0.0, [3.0, 1.0, 2.0], False, RoundMode.FEDBUFF, cfg, 2) == 2.0
    assert staleness_weight(0, 0.5) == 1.0 and staleness_weight(8, 0.5) == pytest.approx(1 / 3)
    assert over_selected(23, 1.3) == 30 and over_selected(3, 1.0) == 3


def test_the_wire_size_counts_every_serialised_object():
    set_task_identity()
    content = RecordDict({P.ARRAYS: ArrayRecord({"w": _array([0.0] * 1000)})})

    assert 4000 < wire_bytes(content) < 4800
    # The header is left out: its ids differ between runs, the simulated clock must not.
    assert wire_bytes(Message(content, dst_node_id=1, message_type="train")) == wire_bytes(content)


def test_a_cut_off_device_keeps_its_partial_update_and_offers_it_when_asked():
    cfg = compose_config(("scenario.num_devices=6",))
    set_task_identity()
    from fl_iot.device_runtime import fresh_model, run_context

    arrays = ArrayRecord(fresh_model(run_context(cfg)).state_dict())
    state = RecordDict()

    def content(server_round: int, **config: int | str) -> RecordDict:
        return RecordDict(
            {P.ARRAYS: arrays, P.CONFIG: ConfigRecord({P.SERVER_ROUND: server_round, **config})}
        )

    with pytest.raises(WentOfflineError, match="after 3 of its local steps"):
        train_on_device(cfg, 0, content(2, **{P.CUTOFF_STEPS: 3}), state)
    assert PARTIAL_ARRAYS in state
    offered = train_on_device(cfg, 0, content(4, **{P.PARTIAL_UPDATES: "use"}), state)
    assert offered[P.UPDATE][P.BASE_ROUND] == 2 and offered[P.UPDATE][P.PARTIAL_STEPS] == 3
    assert offered[P.METRICS][P.TRAIN_STEPS] == 3 and PARTIAL_ARRAYS not in state

    with pytest.raises(WentOfflineError):
        train_on_device(cfg, 0, content(5, **{P.CUTOFF_STEPS: 1}), state)
    fresh = train_on_device(cfg, 0, content(6), state)  # partial updates dropped
    assert P.UPDATE not in fresh and fresh[P.METRICS][P.TRAIN_STEPS] > 1
    assert PARTIAL_ARRAYS not in state


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rounds.mode=async", "rounds.mode must be one of sync, deadline, fedbuff, got 'async'"),
        ("rounds.late_updates=keep", "rounds.late_updates must be one of drop, stale"),
        ("rounds.over_selection=0.5", "rounds.over_selection must be a finite number >= 1"),
        ("fleet.failure_rate=1.5", "fleet.failure_rate must be in [0, 1]"),
        ("fleet.trace=/nonexistent.csv", "fleet.trace='/nonexistent.csv' cannot be read"),
    ],
)
def test_bad_fleet_and_rounds_values_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        compose_config((override,))


def test_a_fleet_profile_for_an_unknown_class_is_refused():
    cfg = compose_config(("fleet=realistic",)).copy()
    with open_dict(cfg):
        cfg.fleet.classes["toaster"] = DeviceConditions()

    with pytest.raises(ConfigError, match=r"unknown device class 'toaster' in fleet\.classes"):
        validate_config(cfg)


def test_fedbuff_needs_a_buffer_the_fleet_can_fill():
    with pytest.raises(
        ConfigError, match=r"rounds.buffer_size must be in \[1, scenario.num_devices=6\]"
    ):
        compose_config(("scenario=smart_home", "rounds=fedbuff", "rounds.buffer_size=7"))
    compose_config(("scenario=smart_home", "rounds.buffer_size=7"))  # unused outside FedBuff


def test_the_progress_line_and_wandb_show_the_simulated_clock():
    from fl_iot.records import RoundRecord
    from fl_iot.tracking.console import format_round
    from fl_iot.tracking.wandb_sink import round_metrics

    ideal = RoundRecord(1, 2, 1.0, 1.0, sampled=3, replied=3, fleet={"clock_s": 0.0})
    simulated = RoundRecord(
        1, 2, 1.0, 1.0, sampled=4, replied=2, fleet={"clock_s": 3725.0, "offline": 1.0, "late": 1.0}
    )

    assert format_round(ideal).endswith("| clients 3/3 replied | 1.0 s")
    assert "| clients 2/4 replied, 1 offline, 1 late | simulated 1 h 02 min |" in format_round(
        simulated
    )
    assert round_metrics(simulated)["fleet/clock_s"] == 3725.0


def test_a_reply_is_measured_once_and_as_the_separate_measures_count_it():
    """``reply_bytes`` is ``wire_bytes``, ``header_bytes`` and ``payload_bytes`` in one pass,
    identical arrays (Flower sends them once) included, and is recomputed for new content."""
    from fl_iot.message_size import header_bytes, payload_bytes, reply_bytes

    set_task_identity()
    sent = Message(RecordDict(), dst_node_id=3, message_type="train")
    sent.metadata.__dict__["_message_id"] = "m"
    zeros = np.zeros(64, dtype=np.float32)
    content = RecordDict(
        {
            "arrays": ArrayRecord([np.ones((8, 8), dtype=np.float32), zeros, zeros.copy()]),
            "metrics": MetricRecord({"num-examples": 7}),
            "copy": ArrayRecord([zeros.copy()]),
        }
    )
    reply = Message(content, reply_to=sent)
    measured = reply_bytes(reply)
    assert measured.content == wire_bytes(reply)
    assert measured.header == header_bytes(reply)
    assert measured.of(["arrays"]) == payload_bytes(content, ["arrays"])
    assert measured.of(["arrays", "copy"]) == payload_bytes(content, ["arrays", "copy"])
    assert measured.content < sum(measured.records.values()) + 200  # shared chunks once
    assert reply_bytes(reply) is measured
    reply.content = RecordDict({"metrics": MetricRecord({"num-examples": 7})})
    assert reply_bytes(reply).content == wire_bytes(reply) < measured.content


@pytest.mark.parametrize("chunk_size", [5_242_880, 64])
def test_sizes_looked_up_by_layout_are_the_sizes_flower_serialises(monkeypatch, chunk_size):
    """Replies of one layout (and small chunks, so that identical chunks occur) measured by
    layout give what deflating every object gives: whole content, header, each record."""
    import flwr.app.message.array as flower_array

    import fl_iot.message_size as size

    monkeypatch.setattr(flower_array, "FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", chunk_size)
    monkeypatch.setattr(size, "FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", chunk_size)
    monkeypatch.setattr(size, "_LAYOUT_BYTES", {})
    monkeypatch.setattr(size, "_ROOT_BYTES", {})
    set_task_identity()
    rng = np.random.default_rng(0)
    sent = Message(RecordDict(), dst_node_id=3, message_type="train")
    sent.metadata.__dict__["_message_id"] = "m"

    def reply(device: int, shared: bool = False) -> Message:
        zeros = np.zeros(200, dtype=np.float32)
        arrays = ArrayRecord(
            {
                "w": torch.from_numpy(rng.normal(size=(8, 30)).astype(np.float32)),
                "b": torch.from_numpy(zeros),  # identical chunks in one array and across two
                # identical to "b" for even devices only: another layout, another size
                "b2": torch.from_numpy(zeros.copy() if device % 2 == 0 else zeros + 1.0),
                "n": torch.tensor(device, dtype=torch.int64),
            }
        )
        records = {
            "arrays": arrays,
            "metrics": MetricRecord({"num-examples": 10 * device + 1, "loss": float(device)}),
            "trainer": ConfigRecord(),
            "empty": ConfigRecord(),  # identical to "trainer": stored once
            "device": ConfigRecord({"device-id": device}),
        }
        if shared:
            records["again"] = ArrayRecord({"b": torch.zeros(200)})
        return Message(RecordDict(records), reply_to=sent)

    for device in range(6):
        for shared in (False, True):
            message = reply(device, shared)
            expected = size._object_by_object(message, message.content)
            measured = size.reply_bytes(message)
            assert measured == expected
            assert measured.content == wire_bytes(message)
    assert len(size._LAYOUT_BYTES) == 2  # two layouts, each serialised once
