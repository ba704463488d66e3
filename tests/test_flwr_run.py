"""The same ServerApp and ClientApp under ``flwr run .`` with Flower's managed local simulation.

The test isolates Flower from the rest of the machine: its own FLWR_HOME, its own SuperLink ports,
no runtime dependency installation (the app runs in this venv), and it stops the SuperLink it
started. ``flwr run --stream`` exits 0 even when a run fails, so the run's status is read back
with ``flwr ls``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from fl_iot.deploy.loopback import finished_status, stage_app
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


@pytest.fixture
def flower_env(tmp_path):
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(39600 + os.getpid() % 200 * 2),
        "FLWR_LOCAL_CONTROL_API_PORT": str(39601 + os.getpid() % 200 * 2),
        "FL_IOT_DATA_ROOT": "",
    }
    yield env
    # The local SuperLink is detached and persistent: stop the one this test started.
    for process in psutil.process_iter(["cmdline"]):
        if any(str(home) in part for part in process.info["cmdline"] or []):
            process.send_signal(signal.SIGTERM)


@pytest.fixture
def app_dir(tmp_path):
    """A copy of the app's files in a directory whose name Flower accepts as an app name.

    ``flwr run`` rejects directories named like ``fl_iot`` or ``main.2``; a CI clone may be one.
    The copy has no ``fl_iot/assets`` binaries in its bundle either (a FAB carries text files
    only), so the run also proves that the bundled data is found through the installed package.
    """
    return stage_app(REPO_ROOT, tmp_path / "fl-iot-app")


@pytest.mark.parametrize(
    ("extra", "num_nodes", "num_devices"),
    [("", 3, 3), ("gateways.devices_per_gateway=2", 2, 4)],
    ids=["one-node-per-device", "gateways"],
)
def test_flwr_run_runs_the_chosen_scenario_through_run_config(
    flower_env, app_dir, tmp_path, extra, num_nodes, num_devices
):
    """Also behind gateways: 2 nodes serving 4 devices, each device sampled and counted."""
    output_dir = tmp_path / "results"
    overrides = (
        f"scenario.num_devices={num_devices} scenario.num_rounds=2 scenario.fraction_train=1.0 "
        + extra
    )
    run_config = (
        f"scenario='healthcare_wearables' strategy='fedmedian' seed=1 "
        f"output-dir='{output_dir}' overrides='{overrides}'"
    )
    started = subprocess.run(
        [
            str(BIN / "flwr"),
            "run",
            ".",
            "local",
            "--stream",
            "--federation-config",
            f"num-supernodes={num_nodes} client-resources-num-cpus=1",
            "--run-config",
            run_config,
        ],
        cwd=app_dir,
        env=flower_env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    output = started.stdout + started.stderr
    assert started.returncode == 0, output[-3000:]
    run_id = re.search(r"Successfully started run (\d+)", output).group(1)  # type: ignore[union-attr]

    status = finished_status(int(run_id), "local", flower_env)

    assert status == "finished:completed", output[-3000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["scenario"] == "healthcare_wearables"
    assert summary["strategy"] == "flwr.serverapp.strategy.FedMedian"
    assert summary["seed"] == 1
    assert summary["rounds_completed"] == 2
    assert summary["clients"]["replied"] == 2 * num_devices
    assert len((output_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert "[round 2/2] central acc" in output
