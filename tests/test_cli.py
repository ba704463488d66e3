"""The ``fl-iot`` command end to end: default scenario, outputs, progress, bad input."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from fl_iot.models import build_model
from tests.e2e import TINY, run_cli, run_dir_override

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One tiny run of the default scenario (no data root: it ships with fl-iot)."""
    run_dir = tmp_path_factory.mktemp("default") / "run"
    result = run_cli(*TINY, run_dir_override(run_dir), env={"FL_IOT_DATA_ROOT": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_default_scenario_writes_every_result_file(default_run):
    run_dir, _ = default_run

    assert {"metrics.jsonl", "summary.json", "metrics.png", "model.pt"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert (run_dir / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_metrics_jsonl_has_one_record_per_round(default_run):
    run_dir, _ = default_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert set(record["central"]) == {"accuracy", "macro_f1", "balanced_accuracy", "loss"}
        assert set(record["federated"]) >= {"accuracy", "macro_f1", "balanced_accuracy", "loss"}
        assert record["sampled"] == 4 and record["replied"] == 4 and record["failed"] == 0
        assert len(record["devices"]) == 4


def test_summary_records_config_versions_seed_and_timings(default_run):
    run_dir, _ = default_run
    summary = json.loads((run_dir / "summary.json").read_text())

    assert summary["status"] == "completed"
    assert summary["scenario"] == "healthcare_wearables"
    assert summary["seed"] == 0
    assert summary["rounds_completed"] == 2
    assert summary["config"]["scenario"]["num_devices"] == 4
    assert summary["versions"]["flwr"].startswith("1.42")
    assert summary["versions"]["torch"].startswith("2.13")
    assert summary["timings"]["server_total_s"] > 0
    assert summary["dataset"]["name"] == "mitbih"
    assert summary["federation"]["num_devices"] == 4
    assert 0.0 <= summary["final"]["central"]["macro_f1"] <= 1.0


def test_final_model_loads_into_the_scenario_model(default_run):
    run_dir, _ = default_run
    summary = json.loads((run_dir / "summary.json").read_text())
    model = build_model(
        summary["config"]["scenario"]["model"],
        summary["dataset"]["input_shape"],
        len(summary["dataset"]["classes"]),
    )

    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))


def test_progress_is_shown_per_round(default_run):
    _, result = default_run
    output = result.stdout + result.stderr

    assert "[round 1/2] central acc" in output
    assert "[round 2/2] central acc" in output
    assert "clients 4/4 replied" in output


BAD_INPUT = [
    (["scenario=mars_rover"], ["mars_rover", "healthcare_wearables", "vehicle_fleet"]),
    (["strategy=fedmagic"], ["fedmagic", "fedavg", "krum"]),
    (["scenario.dataset.name=imagenet"], ["'imagenet'", "mitbih", "occupancy"]),
    (["scenario.fraction_train=1.5"], ["scenario.fraction_train", "(0, 1]", "1.5"]),
    (["scenario.num_rounds=0"], ["scenario.num_rounds", ">= 1", "got 0"]),
    (["attack.fraction=1.5"], ["attack.fraction", "1.5", "more attackers than devices"]),
    (["scenario.num_devices=48"], ["num_devices=48", "only 47"]),
    (
        ["device_classes.wearable.memory_limit_mb=0.01"],
        ["device class 'wearable'", "exceeds memory_limit_mb=0.01"],
    ),
    (["privacy=secret"], ["privacy/secret", "local_dp", "none"]),
    (
        ["scenario.dataset.options.source=records", "scenario.dataset.root=/nonexistent/data"],
        ["'mitbih' not found", "/nonexistent/data"],
    ),
]
"""Each bad input and what its message must contain (the bad value and the valid choices)."""


def test_bad_input_gives_one_clear_message_and_no_traceback(tmp_path):
    # Each case is a separate fl-iot process that fails before Ray starts; run them side by side.
    def attempt(args: list[str]):
        return run_cli(*args, f"hydra.run.dir={tmp_path}/{abs(hash(tuple(args)))}", timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(attempt, [args for args, _ in BAD_INPUT]))

    for (args, expected), result in zip(BAD_INPUT, results, strict=True):
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr + result.stdout, args
        for text in expected:
            assert text in result.stderr, (args, text, result.stderr)


def test_a_completed_run_of_the_same_config_is_recognised_for_skipping(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from fl_iot.cli import completed_summary
    from fl_iot.config import to_container
    from fl_iot.run_config import compose_config

    GlobalHydra.instance().clear()
    cfg = compose_config(("engine.skip_completed=true",))
    summary = {"status": "completed", "config": to_container(compose_config(()))}
    (tmp_path / "summary.json").write_text(json.dumps(summary))

    assert completed_summary(cfg, tmp_path) == summary
    assert completed_summary(compose_config(("seed=1",)), tmp_path) is None
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    assert completed_summary(cfg, tmp_path) is None
