"""``fl-iot -m``: a Hydra multirun over every scenario in one process, each job its own outputs."""

from __future__ import annotations

import json

import pytest

from tests.e2e import TINY, run_cli
from tests.wandb_records import offline_run

pytestmark = pytest.mark.e2e

SCENARIOS = ("healthcare_wearables", "industrial_maintenance", "smart_home", "vehicle_fleet")


def test_every_scenario_runs_end_to_end_in_one_sweep(shared_data_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "-m",
        f"scenario={','.join(SCENARIOS)}",
        *TINY,
        "tracking=wandb",
        f"hydra.sweep.dir={sweep_dir}",
        env={"FL_IOT_DATA_ROOT": str(shared_data_root)},
        timeout=900,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    # One Ray session serves the whole sweep (engine.keep_ray_alive): each job after the first
    # finds it up instead of starting its own.
    reused = (result.stdout + result.stderr).count("reusing the Ray session")
    assert reused == len(SCENARIOS) - 1
    job_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(job_dirs) == len(SCENARIOS)
    seen = []
    for job_dir in job_dirs:
        summary = json.loads((job_dir / "summary.json").read_text())
        assert summary["status"] == "completed", job_dir
        assert summary["rounds_completed"] == 2
        assert len((job_dir / "metrics.jsonl").read_text().splitlines()) == 2
        assert (job_dir / "model.pt").is_file() and (job_dir / "metrics.png").is_file()
        # Multirun jobs share one W&B group (the sweep directory's name), and each job's
        # offline W&B run holds its config, every round's metrics and the summary.
        logged = offline_run(job_dir)
        assert logged["group"] == sweep_dir.name
        assert logged["config"]["scenario"]["name"] == summary["scenario"]
        rounds = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
        assert sorted(logged["history"]) == [1, 2]
        for record in rounds:
            row = logged["history"][record["round"]]
            assert row["central/accuracy"] == record["central"]["accuracy"]
            assert row["federated/macro_f1"] == record["federated"]["macro_f1"]
            assert row["clients/replied"] == record["replied"]
        final = summary["final"]["central"]["macro_f1"]
        assert logged["summary"]["final/central/macro_f1"] == final
        assert logged["summary"]["status"] == "completed"
        seen.append(summary["scenario"])
    assert sorted(seen) == sorted(SCENARIOS)
