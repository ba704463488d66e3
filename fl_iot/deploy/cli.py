"""The ``fl-iot-deploy`` command: a scenario on Flower's Deployment Engine on this machine.

    fl-iot-deploy                                        # 3 SuperNodes, healthcare_wearables
    fl-iot-deploy --nodes 4 scenario=smart_home strategy=trusted scenario.num_rounds=3

It does what a team does on real machines (``docs/deployment.md``), on loopback: creates a CA, a
SuperLink certificate and one key pair per SuperNode; starts a SuperLink with TLS and SuperNode
authentication; registers every node's public key; starts the SuperNodes (each with its
``device-id``, or ``gateway-id`` behind gateways, and its own Runtime API port); runs the
scenario with ``flwr run``; and stops everything it started, also on failure, Ctrl-C or SIGTERM.
Before anything starts, ``fl-iot-export`` writes each device's partition to ``<out>/data``: each
node reads only its own (node-config ``data-path``), the ServerApp only the central test split
(run-config ``server-data``). Results land in ``<out>/results`` (``summary.json``,
``metrics.jsonl``), Flower's logs in ``<out>/logs``.

Arguments after the options are the same Hydra overrides ``fl-iot`` takes. Without
``scenario.num_devices`` among them, the scenario gets one device per node (``--nodes``
devices; ``--nodes`` x ``devices_per_gateway`` behind gateways). Exit codes are ``fl-iot``'s
(:mod:`fl_iot.errors`): 0 the run completed, 2 bad input (before anything starts), 3 the run
failed or a Flower process did not start (the message says which and where its log is), 130 and
143 interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from fl_iot.cli import raise_interrupted, user_errors_exit
from fl_iot.errors import EXIT_CODE_RUN_FAILED, ConfigError, Interrupted
from fl_iot.run_config import CONF_DIR, GROUP_KEYS, hydra_overrides

DEFAULT_NODES = 3
REPOSITORY = CONF_DIR.parent
"""The app ``flwr run`` ships: this checkout (its tracked files)."""


def run_config_of(overrides: Sequence[str], output_dir: Path) -> dict[str, object]:
    """The Flower run-config (``fl_iot.run_config``) for ``fl-iot``-style Hydra overrides.

    A config group choice (``strategy=trusted``) and the seed become run-config keys of their
    own, as ``[tool.flwr.app.config]`` defines them; every other override goes to ``overrides``.
    """
    run_config: dict[str, object] = {"output-dir": str(output_dir.resolve())}
    rest = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key in (*GROUP_KEYS, "seed") and value:
            run_config[key] = int(value) if key == "seed" and value.lstrip("-").isdigit() else value
        else:
            rest.append(override)
    run_config["overrides"] = shlex.join(rest)
    return run_config


@dataclass
class NodePlan:
    """One SuperNode of the deployment: its node-config and the devices it serves.

    :func:`export_data` adds the node's ``data-path`` to its node-config.
    """

    node_config: dict[str, object]
    devices: tuple[int, ...]


def plan_nodes(overrides: Sequence[str], nodes: int | None) -> tuple[list[str], list[NodePlan]]:
    """Compose the run's config to check it; the overrides to run and each node's plan.

    Without ``scenario.num_devices`` among ``overrides``, one is added: ``nodes`` devices (or
    ``nodes`` x ``devices_per_gateway`` behind gateways).

    Raises
    ------
    ConfigError
        For bad input: the config does not compose or validate, or ``nodes`` does not match the
        scenario's devices.
    """
    from hydra.errors import CompactHydraException

    from fl_iot.gateways import gateway_assignment, num_nodes
    from fl_iot.run_config import compose_config

    def composed(overrides: Sequence[str]) -> DictConfig:
        return compose_config(tuple(hydra_overrides(run_config_of(overrides, Path()))))

    overrides = list(overrides)
    try:
        cfg = composed(overrides)
        if not any(o.lstrip("+").startswith("scenario.num_devices=") for o in overrides):
            gateways = gateway_assignment(cfg)
            per_node = 1 if gateways is None else len(gateways[0])
            overrides.append(f"scenario.num_devices={(nodes or DEFAULT_NODES) * per_node}")
            cfg = composed(overrides)
        gateways = gateway_assignment(cfg)
    except CompactHydraException as error:
        raise ConfigError(str(error)) from None
    needed = num_nodes(cfg)
    if nodes is not None and nodes != needed:
        raise ConfigError(
            f"--nodes {nodes} does not match the scenario: scenario.num_devices="
            f"{cfg.scenario.num_devices} needs {needed} SuperNodes"
            + ("" if gateways is None else f" behind gateways of {len(gateways[0])} devices")
        )
    if gateways is None:
        plans = [NodePlan({"device-id": d}, (d,)) for d in range(needed)]
    else:
        plans = [NodePlan({"gateway-id": g}, tuple(gateways[g])) for g in range(needed)]
    return overrides, plans


def export_data(overrides: Sequence[str], plans: Sequence[NodePlan], directory: Path) -> Path:
    """Give each node only its devices' data; the server's share's directory.

    ``fl-iot-export`` writes every device's partition once; each node's ``data-path`` then
    holds its own device's export (a gateway's: a directory of its devices' exports), as on
    real devices where each holds only its own data.
    """
    from fl_iot.data.export import SERVER_DIR, device_dir_name
    from fl_iot.export_command import export_run

    export_run(hydra_overrides(run_config_of(overrides, Path())), directory, None)
    for plan in plans:
        if "gateway-id" in plan.node_config:
            gateway = directory / f"gateway-{plan.node_config['gateway-id']}"
            gateway.mkdir()
            for device in plan.devices:
                (directory / device_dir_name(device)).rename(gateway / device_dir_name(device))
            plan.node_config["data-path"] = str(gateway.resolve())
        else:
            plan.node_config["data-path"] = str(
                (directory / device_dir_name(plan.devices[0])).resolve()
            )
    return (directory / SERVER_DIR).resolve()


def deploy(overrides: Sequence[str], nodes: int | None, output_dir: Path, timeout_s: float) -> int:
    """Run a scenario on a loopback deployment; the process's exit code."""
    from fl_iot.deploy.loopback import Deployment, DeploymentError, stage_app

    overrides, plans = plan_nodes(overrides, nodes)
    output_dir.mkdir(parents=True, exist_ok=True)
    run_config = run_config_of(overrides, output_dir / "results")
    run_config["server-data"] = str(export_data(overrides, plans, output_dir / "data"))
    print(f"fl-iot-deploy: {len(plans)} SuperNodes, results in {output_dir}", file=sys.stderr)
    with Deployment(output_dir) as deployment:
        try:
            deployment.start_superlink()
            for plan in plans:
                deployment.add_node(plan.node_config)
            deployment.wait_for_nodes(len(plans))
            app = stage_app(REPOSITORY, output_dir / "app")
            outcome = deployment.run(app, run_config, timeout_s, echo=sys.stderr.write)
        except DeploymentError as error:
            print(f"fl-iot-deploy: {error}\nlogs: {deployment.logs}", file=sys.stderr)
            return EXIT_CODE_RUN_FAILED
    summary = _summary(output_dir / "results")
    if not outcome.completed or summary.get("status") != "completed":
        print(
            f"fl-iot-deploy: run {outcome.run_id} did not complete: Flower says "
            f"{outcome.status!r}, summary.json says {summary.get('status')!r}"
            + (f" ({summary['error']})" if summary.get("error") else "")
            + f"; logs in {deployment.logs}",
            file=sys.stderr,
        )
        return EXIT_CODE_RUN_FAILED
    print(f"fl-iot-deploy: run {outcome.run_id} completed; results in {output_dir / 'results'}")
    return 0


def _summary(results: Path) -> dict:
    try:
        return dict(json.loads((results / "summary.json").read_text()))
    except (OSError, ValueError):
        return {}


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point ``fl-iot-deploy``."""
    parser = argparse.ArgumentParser(
        prog="fl-iot-deploy",
        description="Run an fl-iot scenario on Flower's Deployment Engine on this machine: "
        "a SuperLink with TLS and SuperNode authentication, one SuperNode per device (or "
        "gateway), flwr run; everything it starts is stopped at the end.",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=None,
        help=f"number of SuperNodes (default {DEFAULT_NODES}, or what scenario.num_devices needs)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the deployment's directory (default outputs/deploy/<date>/<time>)",
    )
    parser.add_argument(
        "--timeout-s", type=float, default=3600.0, help="give up on the run after this long"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as fl-iot takes them")
    args = parser.parse_args(argv)
    if args.nodes is not None and args.nodes < 1:
        parser.error(f"--nodes must be at least 1, got {args.nodes}")
    now = datetime.datetime.now()
    output_dir = args.out or Path("outputs/deploy") / f"{now:%Y-%m-%d}" / f"{now:%H-%M-%S}"
    signal.signal(signal.SIGINT, raise_interrupted)
    signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        with user_errors_exit(parser.prog):
            code = deploy(args.overrides, args.nodes, output_dir, args.timeout_s)
    except Interrupted as interrupt:
        print(f"fl-iot-deploy: {interrupt}; stopped", file=sys.stderr)
        code = interrupt.exit_code
    raise SystemExit(code)


if __name__ == "__main__":
    main()
