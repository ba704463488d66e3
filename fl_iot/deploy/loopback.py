"""A Flower Deployment Engine on this machine: one SuperLink, N SuperNodes, ``flwr run``.

:class:`Deployment` starts Flower's own processes (``flower-superlink``, ``flower-supernode``)
and drives Flower's own CLI (``flwr supernode register``, ``flwr run``, ``flwr ls``), exactly as a
team does on real machines (``docs/deployment.md``); nothing here replaces a part of Flower.
Everything it starts runs in a session of its own and is stopped when the deployment is closed
(SIGTERM to each session, SIGKILL to what is left after :data:`STOP_GRACE_S`), also when the
caller fails or is interrupted: use it as a context manager.

Layout of a deployment's directory::

    pki/          CA, SuperLink certificate and key (TLS)
    keys/         one OpenSSH key pair per SuperNode (node authentication)
    flwr-home/    FLWR_HOME of the ``flwr`` CLI: config.toml names the SuperLink connection
    app/          the app bundle ``flwr run`` ships (the repository's tracked files)
    logs/         superlink.log, supernode-<i>.log
    results/      the ServerApp's outputs (summary.json, metrics.jsonl, ...)

Flower 1.42 facts this relies on (``flower-1.42.md`` and ``deployment-1.42.md`` in the shared
notes): one SuperLink port serves the Fleet, Control and Runtime APIs; every SuperNode on a host
needs its own ``--port``; ``flwr run --stream`` exits 0 when the run failed, so the run's status
is read back with ``flwr ls``; the SuperLink installs an app's dependencies per run unless
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` (the apps run in this environment).
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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from fl_iot.deploy.pki import (
    NodeKeys,
    ServerCertificates,
    create_node_keys,
    create_server_certificates,
)

CONNECTION = "fl-iot-deploy"
"""The name of the SuperLink connection in the deployment's ``$FLWR_HOME/config.toml``."""

HOST = "127.0.0.1"
STOP_GRACE_S = 10.0
"""How long a stopped process may take to exit after SIGTERM before it is killed."""

BIN = Path(sys.executable).parent
"""This environment's scripts: Flower's commands and the apps' interpreter."""


class DeploymentError(RuntimeError):
    """A Flower process failed to start, refused a request or a run did not complete."""


@dataclass(frozen=True)
class RunOutcome:
    """How one ``flwr run`` ended."""

    run_id: int
    status: str  # Flower's status text, "finished:completed" when the run completed
    output: str  # what ``flwr run --stream`` printed (the ServerApp's log)

    @property
    def completed(self) -> bool:
        """Whether Flower reports the run as completed."""
        return self.status == "finished:completed"


@dataclass
class SuperNode:
    """A started SuperNode: its process, key pair, node config and log."""

    index: int
    process: subprocess.Popen[bytes]
    keys: NodeKeys
    node_config: dict[str, object]
    log: Path


@dataclass
class Deployment:
    """One SuperLink with TLS and SuperNode authentication, and the SuperNodes it admits."""

    directory: Path
    port: int = 0  # 0: a free port
    extra_environment: Mapping[str, str] = field(default_factory=dict)
    certificates: ServerCertificates | None = field(default=None, init=False)
    superlink: subprocess.Popen[bytes] | None = field(default=None, init=False)
    nodes: list[SuperNode] = field(default_factory=list, init=False)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """The SuperLink's ``host:port``."""
        return f"{HOST}:{self.port}"

    @property
    def flwr_home(self) -> Path:
        """``FLWR_HOME`` of the ``flwr`` CLI calls."""
        return self.directory / "flwr-home"

    @property
    def logs(self) -> Path:
        """Where each Flower process writes its log."""
        return self.directory / "logs"

    def environment(self) -> dict[str, str]:
        """The environment of every Flower process and CLI call of this deployment."""
        return {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            **self.extra_environment,
        }

    def start_superlink(self, timeout_s: float = 60.0) -> None:
        """Create the certificates, start the SuperLink and wait until it accepts connections."""
        self.certificates = create_server_certificates(self.directory / "pki", hosts=(HOST,))
        self.port = self.port or free_port()
        self.logs.mkdir(parents=True, exist_ok=True)
        command = [
            str(BIN / "flower-superlink"),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--ssl-ca-certfile",
            str(self.certificates.ca_certificate),
            "--ssl-certfile",
            str(self.certificates.certificate),
            "--ssl-keyfile",
            str(self.certificates.private_key),
            "--enable-supernode-auth",
        ]
        self.superlink = self._start(command, self.logs / "superlink.log")
        self._write_cli_config()
        deadline = time.monotonic() + timeout_s
        while not _accepts_connections(HOST, self.port):
            if self.superlink.poll() is not None or time.monotonic() > deadline:
                raise DeploymentError(
                    f"the SuperLink did not start on {self.address}:\n"
                    + log_tail(self.logs / "superlink.log")
                )
            time.sleep(0.2)

    def add_node(self, node_config: Mapping[str, object], register: bool = True) -> SuperNode:
        """Create a key pair, register it (unless ``register`` is false) and start a SuperNode.

        ``node_config`` is the node's ``--node-config`` (``device-id``, ``gateway-id``,
        ``data-path``). An unregistered node is started all the same: the SuperLink refuses it.
        """
        assert self.certificates is not None, "start_superlink() first"
        index = len(self.nodes)
        keys = create_node_keys(self.directory / "keys", f"supernode-{index}")
        if register:
            self.cli(
                "supernode", "register", str(keys.public_key), CONNECTION, "--name",
                f"supernode-{index}",
            )  # fmt: skip
        node = self._start_node(index, keys, dict(node_config))
        self.nodes.append(node)
        return node

    def restart_node(self, node: SuperNode) -> SuperNode:
        """Start a stopped SuperNode again with its key and node config: the same node rejoins.

        The SuperLink knows the node by its registered key, so it keeps its node id, and the
        run's roster its device.
        """
        assert node.process.poll() is not None, f"supernode-{node.index} is still running"
        restarted = self._start_node(node.index, node.keys, node.node_config)
        self.nodes[self.nodes.index(node)] = restarted
        return restarted

    def _start_node(self, index: int, keys: NodeKeys, config: dict[str, object]) -> SuperNode:
        assert self.certificates is not None
        command = [
            str(BIN / "flower-supernode"),
            "--superlink",
            self.address,
            "--root-certificates",
            str(self.certificates.ca_certificate),
            "--port",
            str(free_port()),
            "--node-config",
            " ".join(f"{key}={_toml_value(value)}" for key, value in config.items()),
            "--auth-supernode-private-key",
            str(keys.private_key),
        ]
        log = self.logs / f"supernode-{index}.log"
        return SuperNode(index, self._start(command, log), keys, config, log)

    def wait_for_nodes(self, count: int, timeout_s: float = 120.0) -> None:
        """Wait until ``count`` SuperNodes are online; name the ones that exited meanwhile."""
        deadline = time.monotonic() + timeout_s
        while True:
            online = self.online_nodes()
            if online >= count:
                return
            exited = [node for node in self.nodes if node.process.poll() is not None]
            if exited or time.monotonic() > deadline:
                details = "".join(
                    f"\nsupernode-{node.index} exited with {node.process.returncode}:\n"
                    + log_tail(node.log)
                    for node in exited
                )
                raise DeploymentError(
                    f"{online} of {count} SuperNodes are online at {self.address}" + details
                )
            time.sleep(1.0)

    def online_nodes(self) -> int:
        """How many SuperNodes the SuperLink lists as online."""
        listed = json.loads(self.cli("supernode", "list", CONNECTION, "--format", "json"))
        return sum(1 for node in listed.get("nodes", []) if node.get("status") == "online")

    def run(
        self,
        app: Path,
        run_config: Mapping[str, object],
        timeout_s: float,
        echo: Callable[[str], object] | None = None,
    ) -> RunOutcome:
        """``flwr run`` the app with ``run_config``; wait for it and read its status back.

        ``echo`` receives each line ``flwr run --stream`` prints as it comes (the ServerApp's
        log); all of it is also kept in ``logs/flwr-run.log``. After ``timeout_s`` the run is
        stopped (``flwr stop``) and reported with the status it then has.
        """
        config_file = self.directory / "run-config.toml"
        config_file.write_text(
            "".join(f"{key} = {_toml_value(value)}\n" for key, value in run_config.items())
        )
        command = [str(BIN / "flwr"), "run", str(app), CONNECTION, "--stream",
                   "--run-config", str(config_file)]  # fmt: skip
        lines: list[str] = []
        with subprocess.Popen(
            command,
            env=self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as streaming:
            timed_out = threading.Event()

            def give_up() -> None:
                timed_out.set()
                streaming.kill()

            timer = threading.Timer(timeout_s, give_up)
            timer.start()
            try:
                assert streaming.stdout is not None
                for line in streaming.stdout:
                    lines.append(line)
                    if echo is not None:
                        echo(line)
            finally:
                timer.cancel()
                if streaming.poll() is None:
                    streaming.kill()
        output = "".join(lines)
        (self.logs / "flwr-run.log").write_text(output)
        found = re.search(r"Successfully started run (\d+)", output)
        if found is None:
            raise DeploymentError(f"flwr run did not start a run:\n{output[-3000:]}")
        run_id = int(found.group(1))
        status = self.run_status(run_id, timeout_s=0 if timed_out.is_set() else 60)
        if not status.startswith("finished"):  # timed out: stop it rather than leave it running
            with contextlib.suppress(DeploymentError):
                self.cli("stop", str(run_id), CONNECTION)
        return RunOutcome(run_id, status, output)

    def run_status(self, run_id: int, timeout_s: float = 60.0) -> str:
        """Flower's status of run ``run_id``, once it is finished (or after ``timeout_s``)."""
        return finished_status(run_id, CONNECTION, self.environment(), timeout_s)

    def cli(self, *arguments: str, timeout_s: float = 60.0) -> str:
        """Run ``flwr <arguments>`` against this deployment; its standard output."""
        return flwr(arguments, self.environment(), timeout_s)

    def kill_node(self, node: SuperNode) -> None:
        """SIGKILL a SuperNode and every process it started (a device that dies)."""
        _signal_group(node.process, signal.SIGKILL)
        node.process.wait()

    def stop(self) -> None:
        """Stop everything this deployment started, SuperNodes first."""
        processes = list(reversed(self._processes))
        for process in processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            # The group may hold children (SuperExec, a ClientApp) that outlive their parent.
            _signal_group(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self._processes.clear()

    def _start(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as file:
            process = subprocess.Popen(
                command,
                cwd=self.directory,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stopped with everything it starts
            )
        self._processes.append(process)
        return process

    def _write_cli_config(self) -> None:
        assert self.certificates is not None
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            f'address = "{self.address}"\n'
            # Flower rejects a relative path here.
            f'root-certificates = "{self.certificates.ca_certificate.resolve()}"\n'
        )


def flwr(arguments: Sequence[str], environment: Mapping[str, str], timeout_s: float = 60.0) -> str:
    """Run ``flwr <arguments>`` in ``environment``; its standard output.

    Raises
    ------
    DeploymentError
        When the command exits non-zero (with the tail of its output).
    """
    done = subprocess.run(
        [str(BIN / "flwr"), *arguments],
        env=dict(environment),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise DeploymentError(
            f"flwr {' '.join(arguments)} failed ({done.returncode}):\n"
            + (done.stdout + done.stderr)[-2000:]
        )
    return done.stdout


def finished_status(
    run_id: int, connection: str, environment: Mapping[str, str], timeout_s: float = 60.0
) -> str:
    """Flower's status of run ``run_id`` (``flwr ls``), once it is finished or after ``timeout_s``.

    ``flwr run --stream`` exits 0 also when the run failed: this is how to know.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        listed = json.loads(
            flwr(["ls", connection, "--run-id", str(run_id), "--format", "json"], environment)
        )
        runs = listed.get("runs", [])
        status = str(runs[0]["status"]) if runs else "unknown"
        if status.startswith("finished") or time.monotonic() > deadline:
            return status
        time.sleep(1.0)


def stage_app(repository: Path, target: Path) -> Path:
    """Copy the app's files (what git tracks or would track) to ``target``; return it.

    ``flwr run`` bundles a directory into a FAB and rejects directories named like a Python
    package or with dots (``fl_iot``, ``main.2``), as a checkout may be: name ``target`` like
    ``app`` or ``fl-iot-app``. The copy also keeps virtual environments and run outputs out of
    the bundle.
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=repository,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for name in filter(None, listed):
        source = repository / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def free_port() -> int:
    """A TCP port on :data:`HOST` that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, indented."""
    if not path.exists():
        return "  (no log)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"  {line}" for line in text)


def _accepts_connections(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _toml_value(value: object) -> str:
    """``value`` as a TOML value: booleans and numbers as they are, anything else a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's
