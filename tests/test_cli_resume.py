"""``fl-iot resume=<run dir>``: a run killed with ``kill -9`` on Ray continues to the same model.

The in-process checks of every state a resume restores are ``test_resume.py``'s; here the real
command, the Simulation Engine and a real SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from fl_iot.checkpoint import device_state_dir, read_checkpoint
from fl_iot.client_app import build_client_app
from fl_iot.run_config import compose_config
from fl_iot.server import run_server
from tests.e2e import run_cli, run_dir_override, start_cli
from tests.in_process_grid import InProcessGrid
from tests.processes import kill_all, session_members

RUN = (
    "scenario=smart_home",
    "scenario.num_rounds=5",
    "privacy=local_dp",
    "tracking.sinks=[console,jsonl,summary,checkpoint]",
)


def uninterrupted(out: Path) -> dict[str, torch.Tensor]:
    GlobalHydra.instance().clear()
    cfg = OmegaConf.create(OmegaConf.to_container(compose_config(RUN), resolve=True))
    assert isinstance(cfg, DictConfig)
    app = build_client_app(lambda _: cfg, state_dir=device_state_dir(out))
    run_server(InProcessGrid(app, cfg.scenario.num_devices), cfg, out)
    return torch.load(out / "model.pt", weights_only=True)


@pytest.mark.e2e
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_model(
    shared_data_root, tmp_path, monkeypatch
):
    # The data root for the command, its resume and the in-process reference alike.
    monkeypatch.setenv("FL_IOT_DATA_ROOT", str(shared_data_root))
    run_dir, log = tmp_path / "run", tmp_path / "killed.log"
    run = start_cli(*RUN, run_dir_override(run_dir), log=log)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        # Killed once round 2's checkpoint is written: its metrics line comes just before the
        # checkpoint, so waiting for the line alone can kill the run between the two.
        while checkpointed_round(run_dir) < 2:
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "two rounds did not finish within 300 s"
            seen |= session_members(run.pid)
            time.sleep(0.2)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        kill_all(seen, run.pid)
        run.kill()
        run.wait()
    done = read_checkpoint(run_dir).round
    assert 2 <= done < 5

    resumed = run_cli(f"resume={run_dir}")

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"fl-iot: resuming {run_dir} after round {done} of 5" in resumed.stderr
    assert "Traceback" not in resumed.stderr
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3, 4, 5]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    expected = uninterrupted(tmp_path / "uninterrupted")
    model = torch.load(run_dir / "model.pt", weights_only=True)
    assert model.keys() == expected.keys()
    for key in model:
        np.testing.assert_array_equal(model[key].numpy(), expected[key].numpy())

    again = run_cli(f"resume={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "has completed all 5 rounds; nothing to resume" in again.stderr


def checkpointed_round(run_dir: Path) -> int:
    """The last round the run's checkpoint holds, 0 before the first (written atomically)."""
    if not (run_dir / "checkpoint" / "server.pkl").is_file():
        return 0
    return read_checkpoint(run_dir).round


def test_resume_refuses_other_overrides_and_a_directory_without_checkpoint(tmp_path):
    result = run_cli(f"resume={tmp_path}", "scenario=vehicle_fleet", "seed=3")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"fl-iot: error: resume={tmp_path} continues that run with the config it was started "
        "with; drop the other overrides (scenario=vehicle_fleet seed=3), or start a new run "
        "without resume"
    )
    result = run_cli(f"resume={tmp_path}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"fl-iot: error: resume={tmp_path}: no checkpoint")
    result = run_cli(f"resume={tmp_path / 'missing'}")
    assert result.returncode == 2
    assert "no such directory" in result.stderr
