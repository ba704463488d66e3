"""Compressed updates in fl-iot's runs: every strategy, per device class, bytes, bad payloads."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from clients.compression import COMPRESSED
from fl_iot.client_app import build_client_app
from fl_iot.config import validate_config
from fl_iot.errors import ConfigError
from fl_iot.run_config import compose_config
from fl_iot.server import run_server
from tests.e2e import resolved_config
from tests.in_process_grid import InProcessGrid

TINY = (
    "scenario.num_devices=6",
    "scenario.num_rounds=3",
    "scenario.fraction_train=1.0",
    "scenario.fraction_evaluate=0.5",
    "tracking.sinks=[jsonl,summary]",
)


def composed(*overrides: str) -> DictConfig:
    return resolved_config(*TINY, *overrides)


class CorruptingGrid(InProcessGrid):
    """Delivers like the in-process grid; partition 0's compressed payload is cut short."""

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for reply in replies:
            node = reply.metadata.src_node_id
            if self.contexts[node].node_config["partition-id"] == 0 and reply.has_content():
                payload = reply.content.get(COMPRESSED)
                if isinstance(payload, ConfigRecord):
                    payload["data"] = bytes(payload["data"])[:-3]
        return replies


def run(cfg: DictConfig, out: Path, grid=InProcessGrid) -> tuple[dict, list[dict]]:
    run_server(grid(build_client_app(lambda _: cfg), cfg.scenario.num_devices), cfg, out)
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, records


@pytest.mark.parametrize("strategy", ["fedavg", "trusted", "fedmedian"])
def test_top_k_updates_cut_the_uplink_by_97_percent_under_any_strategy(tmp_path, strategy):
    summary, records = run(composed("compression=topk", f"strategy={strategy}"), tmp_path)
    traffic = summary["communication"]
    assert summary["clients"]["replied"] == 18 and summary["clients"]["failed"] == 0
    assert traffic["uplink_payload_reduction"] >= 0.97
    assert traffic["payload_bytes_up"] < 0.03 * traffic["uncompressed_payload_bytes_up"]
    assert traffic["message_bytes_up"] > traffic["payload_bytes_up"]
    assert traffic["payload_bytes_down"] == traffic["uncompressed_payload_bytes_up"]
    assert set(traffic["by_class"]) == {"wearable", "smartphone"}
    assert summary["final"]["central"]["accuracy"] > 0.3
    if strategy == "trusted":  # decoded before screening: no honest device refused en masse
        refused = [d for r in records for d in r["strategy"].get("rejected", {})]
        assert len(refused) <= 2
    assert records[0]["communication"]["payload_bytes_up"] > 0


def test_without_compression_the_update_weighs_the_model(tmp_path):
    summary, records = run(composed(), tmp_path)
    traffic = summary["communication"]
    assert traffic["uplink_payload_reduction"] == 0.0
    assert traffic["payload_bytes_up"] == traffic["uncompressed_payload_bytes_up"] > 0
    entry = records[0]["devices"]["0"]
    assert entry["payload_bytes_up"] == entry["payload_bytes_down"]
    assert entry["message_bytes_up"] > entry["payload_bytes_up"]
    # Federated evaluation: 3 of 6 devices a round get the model and send their scores.
    evaluated = [e for e in records[0]["devices"].values() if "eval_message_bytes_down" in e]
    assert len(evaluated) == 3
    assert all(e["eval_message_bytes_down"] > e["payload_bytes_down"] for e in evaluated)
    assert all(0 < e["eval_message_bytes_up"] < 2000 for e in evaluated)
    assert traffic["eval_message_bytes_down"] == sum(
        e.get("eval_message_bytes_down", 0) for r in records for e in r["devices"].values()
    )


def test_a_device_class_can_send_uncompressed_while_the_others_compress(tmp_path):
    summary, _ = run(
        composed("compression=qsgd8", "+compression.classes.wearable={codec:none}"), tmp_path
    )
    by_class = summary["communication"]["by_class"]
    assert by_class["wearable"]["uplink_payload_reduction"] == 0.0
    assert 0.7 < by_class["smartphone"]["uplink_payload_reduction"] < 0.8


def test_a_malformed_compressed_payload_is_refused_and_logged_and_the_run_goes_on(tmp_path, caplog):
    summary, records = run(
        composed("compression=topk", "strategy=trusted"), tmp_path, CorruptingGrid
    )
    assert summary["status"] == "completed"
    assert summary["clients"]["failed"] == 3 and summary["clients"]["replied"] == 15
    assert all(
        r["devices"]["0"]["error"].startswith("malformed compressed update: topk payload")
        for r in records
    )
    assert "refusing the update of device 0" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("compression.codec=zip",), "unknown codec 'zip' in compression.codec; valid choices"),
        (("compression=qsgd8", "compression.bits=3"), r"compression.bits must be 4 or 8, got 3"),
        (
            ("compression=topk", "compression.fraction=0"),
            r"compression.fraction must be in \(0, 1\]",
        ),
        (
            ("+compression.classes.drone={codec:float16}",),
            "unknown device class 'drone' in compression.classes",
        ),
        (
            ("+compression.classes.wearable={codec:qsgd,bitz:4}",),
            "Key 'bitz' not in 'CodecConfig'",
        ),
    ],
)
def test_a_bad_compression_setting_is_one_clear_error(overrides, message):
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(overrides))


def test_the_raw_data_baseline_is_the_training_data_at_the_sensors_precision(tmp_path):
    from fl_iot.device_runtime import run_context

    cfg = composed()
    summary, _ = run(cfg, tmp_path / "ideal")
    raw = summary["communication"]["raw_data"]
    data = run_context(cfg).data
    examples = sum(len(data.device_split(d)[0]) for d in range(6))
    assert raw["bytes_once"] == examples * 252 * 11 / 8  # a 0.7 s beat window, 11-bit ADC
    assert raw["bytes_per_second_per_device"] == 360 * 11 / 8
    assert raw["stream_bytes_per_round"] is None  # an ideal fleet's clock does not move
    assert raw["uplink_bytes_per_round"] == summary["communication"]["message_bytes_up"] / 3

    summary, records = run(composed("fleet=realistic", "rounds=deadline"), tmp_path / "real")
    raw = summary["communication"]["raw_data"]
    mean_s = sum(r["fleet"]["round_duration_s"] for r in records) / len(records)
    assert raw["stream_bytes_per_round"] == pytest.approx(360 * 11 / 8 * 6 * mean_s)


def test_the_downlink_model_travels_compressed_and_updates_decode_against_it(tmp_path):
    cfg = composed("compression=topk", "+compression.downlink={codec:qsgd,bits:8}")
    summary, _records = run(cfg, tmp_path)
    traffic = summary["communication"]
    assert summary["clients"]["failed"] == 0
    assert 0.7 < traffic["downlink_payload_reduction"] < 0.8
    assert traffic["uplink_payload_reduction"] >= 0.97
    assert summary["final"]["central"]["accuracy"] > 0.3


def test_a_top_k_downlink_is_refused():
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match=r"compression\.downlink\.codec=topk would send a model"):
        validate_config(compose_config(("+compression.downlink={codec:topk}",)))
