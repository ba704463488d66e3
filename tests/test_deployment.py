"""fl-iot on Flower's Deployment Engine over loopback: TLS, SuperNode authentication, 3 SuperNodes.

One SuperLink and its nodes serve the whole module (``xdist_group`` keeps its tests on one
worker); the fixture stops every process it started, and checks that none is left, also when a
test fails. The killed-node test runs last: it leaves the deployment with 2 nodes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fl_iot.deploy.cli import export_data, plan_nodes, run_config_of
from fl_iot.deploy.loopback import Deployment, RunOutcome, stage_app
from tests.conftest import REPO_ROOT
from tests.e2e import run_cli, run_dir_override
from tests.processes import session_members

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("deployment")]

SCENARIO = (
    "scenario=healthcare_wearables",
    "strategy=fedavg",
    "seed=1",
    "scenario.num_devices=3",
    "scenario.fraction_train=1.0",
    "scenario.fraction_evaluate=1.0",
)
RUN_TIMEOUT_S = 420
BUNDLED_DATA = {"FL_IOT_DATA_ROOT": ""}
"""The bundled MIT-BIH subset, as on a fresh clone, for the deployment and the simulation."""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployment")
    _, plans = plan_nodes(SCENARIO, 3)
    server_data = export_data(SCENARIO, plans, root / "data")  # each node holds its own data
    started: list[int] = []
    with Deployment(root, extra_environment=BUNDLED_DATA) as running:
        running.start_superlink()
        started.append(running.superlink.pid)  # type: ignore[union-attr]
        for plan in plans:
            started.append(running.add_node(plan.node_config).process.pid)
        running.wait_for_nodes(3)
        yield running, stage_app(REPO_ROOT, root / "app"), server_data
    left = {pid for sid in started for pid in session_members(sid)}
    assert not left, f"processes left running: {left}"


def test_an_unregistered_supernode_is_refused(deployment):
    running, _, _ = deployment
    intruder = running.add_node({"device-id": 0}, register=False)
    try:
        code = intruder.process.wait(timeout=120)
    finally:
        running.kill_node(intruder)
    assert code != 0
    assert "Failed to activate SuperNode" in intruder.log.read_text()
    assert running.online_nodes() == 3


def test_a_run_completes_with_the_simulations_metrics(deployment, tmp_path):
    running, app, server_data = deployment
    overrides = [*SCENARIO, "scenario.num_rounds=2"]
    outcome = _run(running, app, overrides, tmp_path / "deployed", server_data)
    simulated = run_cli(*overrides, run_dir_override(tmp_path / "simulated"), env=BUNDLED_DATA)
    assert simulated.returncode == 0, simulated.stderr[-3000:]

    assert outcome.completed, outcome.output[-3000:]
    deployed_rounds = _rounds(tmp_path / "deployed")
    simulated_rounds = _rounds(tmp_path / "simulated")
    assert len(deployed_rounds) == 2
    for deployed, simulated_round in zip(deployed_rounds, simulated_rounds, strict=True):
        assert deployed["central"] == simulated_round["central"]
        assert deployed["federated"] == simulated_round["federated"]
        assert deployed["replied"] == 3
        for device in ("0", "1", "2"):
            assert (
                deployed["devices"][device]["train-loss"]
                == simulated_round["devices"][device]["train-loss"]
            )
    summary = json.loads((tmp_path / "deployed" / "summary.json").read_text())
    assert summary["status"] == "completed"


def test_a_run_past_its_timeout_is_stopped_and_reported_not_completed(deployment, tmp_path):
    running, app, server_data = deployment
    run_config = {
        **run_config_of([*SCENARIO, "scenario.num_rounds=50"], tmp_path / "deployed"),
        "server-data": str(server_data),
    }
    outcome = running.run(app, run_config, timeout_s=15)

    assert not outcome.completed
    status = running.run_status(outcome.run_id, timeout_s=60)
    assert status.startswith("finished") and status != "finished:completed", status


def test_a_killed_supernode_is_counted_as_failed_under_its_device_and_rejoins_as_it(
    deployment, tmp_path
):
    """Device 2's node dies after round 1 and is restarted with its key after round 2.

    Round 2 counts device 2 as failed (Flower's "Node Unavailable" reply comes from the
    SuperLink's own node id, and is mapped back to the device), the run completes, and the
    restarted node answers again as device 2.
    """
    running, app, server_data = deployment
    victim = next(node for node in running.nodes if node.node_config["device-id"] == 2)
    results = tmp_path / "deployed"
    outcome: list[RunOutcome] = []
    runner = threading.Thread(
        target=lambda: outcome.append(
            _run(running, app, [*SCENARIO, "scenario.num_rounds=4"], results, server_data)
        )
    )
    runner.start()
    _wait_for_rounds(results, 1)
    running.kill_node(victim)
    _wait_for_rounds(results, 2)
    running.restart_node(victim)
    runner.join(timeout=RUN_TIMEOUT_S)

    assert outcome and outcome[0].completed, outcome[0].output[-3000:] if outcome else "no run"
    rounds = _rounds(results)
    assert len(rounds) == 4
    assert rounds[0]["replied"] == 3
    assert rounds[1]["replied"] == 2
    assert rounds[1]["failed"] + rounds[1]["missing"] == 1
    assert rounds[1]["devices"]["2"]["outcome"] in {"failed", "offline"}, rounds[1]["devices"]
    assert {rounds[1]["devices"][d]["outcome"] for d in ("0", "1")} == {"on_time"}
    assert rounds[3]["replied"] == 3, rounds[3]["devices"]["2"]
    assert rounds[3]["devices"]["2"]["outcome"] == "on_time"


@pytest.mark.parametrize("mode", ["relay", "aggregate"])
def test_fl_iot_deploy_runs_a_scenario_behind_gateways(tmp_path, mode):
    """Two gateway SuperNodes serve 4 devices, each node holding only its devices' data; an
    aggregating gateway ships one average, so no device's update reaches the server."""
    done = subprocess.run(
        [sys.executable, "-m", "fl_iot.deploy.cli", "--out", str(tmp_path), "--nodes", "2",
         *SCENARIO[:3], "gateways.devices_per_gateway=2", "scenario.num_rounds=2",
         "scenario.fraction_train=1.0", f"gateways.mode={mode}"],
        cwd=REPO_ROOT,
        env={**os.environ, **BUNDLED_DATA},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )  # fmt: skip

    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "completed; results in" in done.stdout
    rounds = _rounds(tmp_path / "results")
    assert [r["replied"] for r in rounds] == [4, 4]
    assert sorted(p.name for p in (tmp_path / "data" / "gateway-1").iterdir()) == [
        "device-2",
        "device-3",
    ]
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["status"] == "completed"
    for record in rounds:  # models up: one per device, or one per gateway shared by its devices
        devices = record["devices"].values()
        up = sum(e["payload_bytes_up"] for e in devices) / next(iter(devices))["payload_bytes_down"]
        assert round(up) == (2 if mode == "aggregate" else 4), up


def test_fl_iot_deploy_stops_everything_it_started_on_sigterm(tmp_path):
    log = tmp_path / "deploy.log"
    with log.open("w") as output:
        command = subprocess.Popen(
            [sys.executable, "-m", "fl_iot.deploy.cli", "--out", str(tmp_path / "run"),
             "--nodes", "2", *SCENARIO[:3], "scenario.num_rounds=50"],
            cwd=REPO_ROOT,
            env={**os.environ, **BUNDLED_DATA},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "[round 1/50]" not in log.read_text() and time.monotonic() < deadline:
            assert command.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert (tmp_path / "run" / "logs" / "supernode-1.log").exists()
        command.send_signal(signal.SIGTERM)
        code = command.wait(timeout=60)
        left = session_members(command.pid)
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
    assert code == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert "interrupted by SIGTERM" in log.read_text()
    assert not left, f"processes left running: {left}"


def test_fl_iot_deploy_refuses_bad_input_before_starting_anything(tmp_path):
    for arguments, message in [
        (["strategy=nope"], "Could not find 'strategy/nope'"),
        (["--nodes", "2", "scenario.num_devices=5"], "--nodes 2 does not match the scenario"),
        (["--nodes", "0"], "--nodes must be at least 1, got 0"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "fl_iot.deploy.cli", "--out", str(tmp_path / "run"), *arguments],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "logs").exists()


def test_each_node_is_planned_with_its_device_or_gateway_and_only_their_data(tmp_path):
    _, devices = plan_nodes(["scenario=smart_home"], 4)
    assert [plan.node_config for plan in devices] == [{"device-id": i} for i in range(4)]
    overrides, gateways = plan_nodes(["gateways.devices_per_gateway=3"], 2)
    assert [(p.node_config, p.devices) for p in gateways] == [
        ({"gateway-id": 0}, (0, 1, 2)),
        ({"gateway-id": 1}, (3, 4, 5)),
    ]
    assert "scenario.num_devices=6" in overrides

    server = export_data(overrides, gateways, tmp_path)
    assert sorted(p.name for p in Path(str(gateways[1].node_config["data-path"])).iterdir()) == [
        "device-3",
        "device-4",
        "device-5",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway-0", "gateway-1", "server"]
    assert server == (tmp_path / "server").resolve()


def test_run_config_keeps_group_choices_apart_from_other_overrides(tmp_path):
    run_config = run_config_of(["strategy=trusted", "seed=3", "scenario.num_rounds=2"], tmp_path)
    assert run_config == {
        "output-dir": str(tmp_path.resolve()),
        "strategy": "trusted",
        "seed": 3,
        "overrides": "scenario.num_rounds=2",
    }


def _run(
    running: Deployment, app: Path, overrides: list[str], results: Path, server_data: Path
) -> RunOutcome:
    run_config = {**run_config_of(overrides, results), "server-data": str(server_data)}
    return running.run(app, run_config, timeout_s=RUN_TIMEOUT_S)


def _wait_for_rounds(results: Path, count: int) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while len(_rounds(results)) < count and time.monotonic() < deadline:
        time.sleep(0.2)


def _rounds(results: Path) -> list[dict]:
    metrics = results / "metrics.jsonl"
    if not metrics.exists():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
