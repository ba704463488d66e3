"""A run attached to a running Ray cluster: a head and a worker node on loopback (docs/scale.md).

The e2e test starts the two nodes as separate ``ray start --block`` processes, as two machines
would, and runs the real ``fl-iot`` command with ``RAY_ADDRESS`` pointing at the head. The quick
tests pin down the ``ray.init`` arguments with and without a cluster and the checks that refuse
a cluster request before any data is loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from fl_iot import simulation
from fl_iot.errors import ConfigError
from fl_iot.ray_cluster import CLUSTER_CONNECT_TIMEOUT_S, cluster_node_cpus
from fl_iot.reaper import TAG_VARIABLE
from fl_iot.simulation import check_engine_resources, ray_init_args
from tests.e2e import TINY, run_cli, run_dir_override
from tests.processes import kill_all, session_members, wait_until_gone

NODE_START_TIMEOUT_S = 60.0
"""How long the two nodes may take to join (about 10 s on 2 cores)."""

STOP_TIMEOUT_S = 15.0
"""How long ``ray start --block`` may take to stop its processes after SIGTERM (about 3 s)."""

MARKER_VARIABLE = "FL_IOT_TEST_RAY_CLUSTER"
"""Marks the environment of everything the test's Ray nodes start, to find leftovers by."""

OFFLINE = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}

PROBE = """
import json, sys, time
import ray
from ray._private import state

ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + float(sys.argv[2])
while True:
    alive = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    if len(alive) >= int(sys.argv[3]) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
# The GCS actor table keeps dead actors with the node they ran on; Ray's public state API
# (ray.util.state) would need the dashboard, which the nodes run without.
actors = [[a["ActorClassName"], a["Address"]["NodeID"]] for a in state.actors().values()]
print(json.dumps({"alive": alive, "actors": actors}))
"""
"""Connects to the cluster, waits for ``argv[3]`` alive nodes, prints them and every actor."""


def free_port() -> int:
    """A TCP port nothing on 127.0.0.1 listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_command(*args: str) -> list[str]:
    """``ray start --block`` for one node, with every port Ray would otherwise fix chosen free.

    Two nodes on one machine (and any other Ray on it) would collide on Ray's fixed defaults:
    the dashboard agent's 52365, the head's client server 10001 and dashboard 8265.
    """
    ray = str(Path(sys.executable).with_name("ray"))
    return [
        ray,
        "start",
        *args,
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "1",
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--disable-usage-stats",
        "--block",
    ]


@dataclass
class RayCluster:
    """Two ``ray start --block`` processes, each in a session of its own, and their logs."""

    address: str
    temp_dir: Path
    log_dir: Path
    env: dict[str, str]
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def data_env(self) -> dict[str, str]:
        """The data root the nodes have, for the fl-iot process too (CI sets none of its own)."""
        return {"FL_IOT_DATA_ROOT": self.env["FL_IOT_DATA_ROOT"]}

    def start_node(self, name: str, *args: str) -> None:
        """Start one node, its output into ``<log_dir>/<name>.log``."""
        with (self.log_dir / f"{name}.log").open("w") as log:
            self.nodes.append(
                subprocess.Popen(
                    node_command(*args),
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its session holds what it starts: the clean-up
                )
            )

    def logs(self) -> str:
        """The nodes' ``ray start`` output, for a failure's message."""
        return "\n".join(p.read_text()[-2000:] for p in sorted(self.log_dir.glob("*.log")))

    def wait_for_head(self, port: int) -> None:
        """Wait until the head's GCS accepts connections (a worker needs it to join)."""
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.nodes[0].poll() is None, f"the head node exited:\n{self.logs()}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            time.sleep(0.3)
        raise AssertionError(f"the head did not listen on {port}:\n{self.logs()}")

    def probe(self, min_alive: int) -> dict[str, list]:
        """The cluster's alive nodes and its actors, seen by a driver of its own.

        A separate process, so that this one never connects to Ray (other tests in it start
        their own).
        """
        result = subprocess.run(
            [sys.executable, "-c", PROBE, self.address, str(NODE_START_TIMEOUT_S), str(min_alive)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=NODE_START_TIMEOUT_S + 30,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:] + self.logs()
        probed: dict[str, list] = json.loads(result.stdout.strip().splitlines()[-1])
        return probed

    def left_running(self) -> set[int]:
        """The processes of the nodes' sessions, and any carrying the test's marker."""
        pids = {pid for node in self.nodes for pid in session_members(node.pid)}
        return pids | marked_processes(self.env[MARKER_VARIABLE])

    def stop(self) -> set[int]:
        """SIGTERM both nodes (``ray start --block`` then stops what it started); SIGKILL the rest.

        Returns what was still running after ``STOP_TIMEOUT_S`` (and then killed). Never
        ``ray stop``: it stops every Ray process of this user, other tests' and runs' too.
        """
        for node in reversed(self.nodes):  # the worker first, as a cluster is taken down
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        left = wait_until_gone(self.left_running(), STOP_TIMEOUT_S)
        if left:
            for node in self.nodes:
                kill_all(left, node.pid)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(5)
        return left


def marked_processes(marker: str) -> set[int]:
    """The running processes whose environment holds ``MARKER_VARIABLE=marker``."""
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
    return found


@pytest.fixture
def ray_cluster(tmp_path: Path, shared_data_root: Path) -> Iterator[RayCluster]:
    """A head and one worker node, 1 CPU each, on 127.0.0.1; both stopped however the test ends.

    The nodes' environment is what a machine's shell would give ``ray start``: the data root
    (the ClientApps load their partitions on the node they run on) and Flower offline.
    """
    port = free_port()
    # Ray's socket paths must stay under 108 bytes: a short directory, not pytest's tmp_path.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", TAG_VARIABLE)}
    env.update(OFFLINE)
    env.update(
        FL_IOT_DATA_ROOT=str(shared_data_root),
        RAY_USAGE_STATS_ENABLED="0",
        **{MARKER_VARIABLE: temp_dir.name},
    )
    cluster = RayCluster(f"127.0.0.1:{port}", temp_dir, tmp_path, env)
    try:
        cluster.start_node(
            "head",
            "--head",
            "--port",
            str(port),
            "--include-dashboard=false",
            "--ray-client-server-port",
            str(free_port()),
            "--temp-dir",
            str(temp_dir),
        )
        cluster.wait_for_head(port)
        cluster.start_node("worker", f"--address={cluster.address}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.e2e
@pytest.mark.xdist_group("e2e")
def test_a_run_attaches_to_a_running_two_node_cluster(ray_cluster, tmp_path):
    """``RAY_ADDRESS`` set: the CLI's run uses the cluster's two nodes and starts no Ray of its own.

    Flower sizes its actor pool per node: one 1-CPU ClientApp actor on each 1-CPU node, so the
    cluster's actor table must show Flower's actors on both. The run's scores equal those of the
    same run on this machine alone, a ClientApp larger than every node is refused with one
    message, and stopping the two ``ray start`` processes leaves no process behind.
    """
    nodes = ray_cluster.probe(min_alive=2)["alive"]
    assert len(nodes) == 2, ray_cluster.logs()
    run_dir = tmp_path / "run"

    result = run_cli(
        "scenario=smart_home",
        *TINY,
        "tracking.sinks=[console,summary]",
        run_dir_override(run_dir),
        env={**OFFLINE, **ray_cluster.data_env, "RAY_ADDRESS": ray_cluster.address},
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:] + ray_cluster.logs()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["rounds_completed"] == 2
    assert f"attaching to the Ray cluster at {ray_cluster.address}: 2 nodes, 2 CPUs" in (
        result.stdout + result.stderr
    )
    actors = ray_cluster.probe(min_alive=2)["actors"]
    client_nodes = {node for name, node in actors if name == "ClientAppActor"}
    assert client_nodes == set(nodes), actors
    # The same run on this machine alone (its own Ray, as many CPUs) ends with the same scores:
    # nothing a run computes depends on which node ran which device.
    alone = run_cli(
        "scenario=smart_home",
        *TINY,
        "tracking.sinks=[console,summary]",
        run_dir_override(tmp_path / "alone"),
        env={**OFFLINE, **ray_cluster.data_env, "RAY_ADDRESS": ""},
        timeout=300,
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "attaching to the Ray cluster" not in alone.stdout + alone.stderr
    alone_final = json.loads((tmp_path / "alone" / "summary.json").read_text())["final"]
    for part in ("central", "federated", "train"):
        assert alone_final[part] == summary["final"][part], part
    # A ClientApp that no node can host is refused up front; this machine's 2 cores would not.
    too_big = run_cli(
        "scenario=smart_home",
        *TINY,
        "engine.num_cpus_per_client=2",
        run_dir_override(tmp_path / "too_big"),
        env={**OFFLINE, **ray_cluster.data_env, "RAY_ADDRESS": ray_cluster.address},
        timeout=120,
    )
    assert too_big.returncode == 2, too_big.stderr[-3000:]
    assert "Traceback" not in too_big.stderr
    assert "engine.num_cpus_per_client=2 is more than any node" in too_big.stderr
    assert "CPUs of its 2 alive nodes: 1, 1" in too_big.stderr
    assert ray_cluster.stop() == set()  # ray start --block stopped all it started
    assert ray_cluster.left_running() == set()


def engine_config(**engine: object) -> DictConfig:
    """A config with just the ``engine`` keys the Ray set-up reads."""
    cfg = OmegaConf.create({"engine": {"num_cpus": None, "num_cpus_per_client": 1.0, **engine}})
    assert isinstance(cfg, DictConfig)
    return cfg


def test_without_a_cluster_ray_starts_with_this_machines_cpus(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    assert ray_init_args(engine_config()) == {
        "num_cpus": os.cpu_count() or 1,
        "log_to_driver": False,
    }
    assert ray_init_args(engine_config(num_cpus=3)) == {"num_cpus": 3, "log_to_driver": False}
    monkeypatch.setenv("RAY_ADDRESS", "local")  # Ray's own word for "start one here"
    assert ray_init_args(engine_config(num_cpus=3)) == {"num_cpus": 3, "log_to_driver": False}


def test_on_a_cluster_no_cpu_count_is_passed_and_its_nodes_set_the_limit(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setattr(simulation, "cluster_node_cpus", lambda address: [64.0, 8.0])

    assert ray_init_args(engine_config(num_cpus_per_client=64.0)) == {"log_to_driver": False}
    check_engine_resources(engine_config(num_cpus_per_client=64.0))  # not this machine's cores
    with pytest.raises(ConfigError, match=r"num_cpus_per_client=65 .* nodes: 64, 8\)"):
        check_engine_resources(engine_config(num_cpus_per_client=65.0))


def test_a_cpu_count_for_a_cluster_is_refused_with_one_message(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")

    with pytest.raises(ConfigError, match=r"engine.num_cpus=4 .* RAY_ADDRESS=10.0.0.1:6379"):
        check_engine_resources(engine_config(num_cpus=4))
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(ConfigError, match=r"engine\.num_cpus_per_client=8"):
        check_engine_resources(engine_config(num_cpus=4, num_cpus_per_client=8.0))


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1:{free_port}", "no Ray cluster answers at RAY_ADDRESS=127.0.0.1:"),
        ("head-node", "'head-node' is not <host>:<port>"),
        ("ray://10.0.0.1:10001", "is a Ray Client address"),
    ],
)
def test_an_address_no_cluster_answers_on_is_refused_at_once(address, message):
    started = time.monotonic()

    with pytest.raises(ConfigError, match=re.escape(message)):
        cluster_node_cpus(address.format(free_port=free_port()))
    assert time.monotonic() - started < CLUSTER_CONNECT_TIMEOUT_S
