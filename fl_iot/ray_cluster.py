"""Attaching a run to a running Ray cluster: where it is, and what its nodes offer.

Flower's Simulation Engine starts Ray only when the process is not connected to one, and
``ray.init()`` attaches to a running cluster when ``RAY_ADDRESS`` names one; fl-iot checks that
cluster before it loads any data (:mod:`fl_iot.simulation`, docs/scale.md).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from typing import Any

from fl_iot.errors import ConfigError

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
}
"""The environment of every run's Ray processes: Flower's telemetry and update check off, and
Ray's log deduplication and accelerator override as fl-iot's runs expect them."""

RAY_ADDRESS_ENV = "RAY_ADDRESS"
"""Ray's variable naming a running cluster to attach to (``<head>:<port>``), see docs/scale.md."""

CLUSTER_CONNECT_TIMEOUT_S = 5.0
"""How long the check of a cluster waits for its head to accept a connection."""


def ray_cluster_address() -> str | None:
    """The running Ray cluster this process attaches to, or None if it starts its own Ray.

    Ray's own rule, which ``ray.init()`` applies when Flower calls it: a non-empty
    ``RAY_ADDRESS`` other than ``local`` (``<head>:<port>``, or ``auto`` for the cluster that
    ``ray start`` made on this machine) connects to that cluster instead of starting one.
    """
    address = os.environ.get(RAY_ADDRESS_ENV)
    return address if address and address != "local" else None


def cluster_node_cpus(address: str) -> list[float]:
    """The CPUs of each alive node of the running Ray cluster at ``address`` (``RAY_ADDRESS``).

    Connects as a driver, reads the node table and disconnects, before the run loads its data;
    Flower connects again for the run. A host and port that nothing answers on is refused after
    a TCP connect of at most :data:`CLUSTER_CONNECT_TIMEOUT_S`: ``ray.init`` would retry for
    minutes. A kept session of this process's earlier job (a sweep) is read, not reconnected.

    Raises
    ------
    ConfigError
        If ``address`` is not ``<host>:<port>`` (or ``auto``), names Ray Client (``ray://``:
        fl-iot runs as a driver on a node of the cluster), or no cluster answers there.
    """
    hint = f"or unset {RAY_ADDRESS_ENV} to run on this machine alone"
    if address.startswith("ray://"):
        raise ConfigError(
            f"{RAY_ADDRESS_ENV}={address} is a Ray Client address: run fl-iot on a machine of "
            f"the cluster with {RAY_ADDRESS_ENV}=<head>:<port> (the head's GCS port), {hint}"
        )
    if address != "auto":  # Ray finds the cluster `ray start` made on this machine itself
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                f"{RAY_ADDRESS_ENV}={address!r} is not <host>:<port> (the head's "
                f"`ray start --head --port`), {hint}"
            )
        try:
            socket.create_connection(
                (host.strip("[]"), int(port)), CLUSTER_CONNECT_TIMEOUT_S
            ).close()
        except OSError as error:
            raise ConfigError(
                f"no Ray cluster answers at {RAY_ADDRESS_ENV}={address} "
                f"({error.strerror or error}): start its head there with `ray start --head "
                f"--port {port}` and let this machine reach that port, {hint}"
            ) from None
    import ray

    if ray.is_initialized():
        return _alive_node_cpus(ray.nodes())
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(log_to_driver=False, logging_level=logging.WARNING)
        return _alive_node_cpus(ray.nodes())
    except (ConnectionError, RuntimeError) as error:  # e.g. another Ray or Python version
        message = " ".join(str(error).split())
        raise ConfigError(f"cannot attach to the Ray cluster at {address}: {message}") from None
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)  # ray.init replaced the CLI's handler


def _alive_node_cpus(nodes: list[dict[str, Any]]) -> list[float]:
    return [float(node["Resources"].get("CPU", 0.0)) for node in nodes if node["Alive"]]
