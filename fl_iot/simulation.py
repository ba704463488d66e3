"""The seam to Flower's Simulation Engine: the only module that calls ``run_simulation``.

``flwr.simulation.run_simulation`` is deprecated in Flower 1.42 (``flwr run`` is the future); it
still works and is what lets one Python process run a Hydra multirun sweep, so fl-iot keeps it
behind this one function. ``run_simulation`` does not pass a run-config, so the apps get the
composed config by closure.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from omegaconf import DictConfig, OmegaConf

from fl_iot.checkpoint import device_state_dir
from fl_iot.client_app import build_client_app
from fl_iot.errors import ConfigError
from fl_iot.gateways import num_nodes
from fl_iot.ray_cluster import (
    OFFLINE_ENV,
    RAY_ADDRESS_ENV,
    cluster_node_cpus,
    ray_cluster_address,
)
from fl_iot.reaper import start_reaper
from fl_iot.roster import poll_replies
from fl_iot.server import RunResult, run_server

log = logging.getLogger(__name__)


SERVER_STOP_TIMEOUT_S = 30.0
"""How long a stopped run waits for its ServerApp to write its outputs."""


class SimulationError(RuntimeError):
    """The simulation ended without the ServerApp finishing its run."""


class RunStopped(RuntimeError):  # noqa: N818 (an event, like Flower's own RunNotRunning)
    """Raised in the ServerApp's thread when the run was stopped (Ctrl-C, SIGTERM, a crash).

    The ServerApp then ends like a failed run: ``summary.json`` says ``failed`` and why.
    """


_kept_ray_init_args: dict[str, Any] | None = None
"""The ``ray.init`` arguments of the Ray session a finished run left up; None if none is."""


def run_in_simulation(cfg: DictConfig, output_dir: Path, resume: bool = False) -> RunResult:
    """Run the study of ``cfg`` on the Simulation Engine (Ray): one node per device or gateway.

    With ``RAY_ADDRESS`` naming a running Ray cluster, the run attaches to it instead of
    starting Ray on this machine (:func:`ray_init_args`, docs/scale.md).

    Parameters
    ----------
    cfg : DictConfig
        Composed, validated and fully resolved config.
    output_dir : Path
        Where the sinks write; the run's checkpoint and its simulated devices' state are kept
        there too (:mod:`fl_iot.checkpoint`).
    resume : bool
        Continue the run whose checkpoint ``output_dir`` holds.
    """
    from flwr.simulation import run_simulation

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    quiet_flower_logs()
    result = RunResult()
    stop, server_done = threading.Event(), threading.Event()
    server_app = ServerApp()

    @server_app.main()
    def _server_main(grid: Grid, context: Context) -> None:
        try:
            run_server(StoppableGrid(grid, stop), cfg, output_dir, result, resume=resume)
        finally:
            server_done.set()

    # Flower's Ray backend pickles the ClientApp factory with every message. Capturing the config
    # as YAML text, turned back into one cached DictConfig per worker, keeps each message's
    # payload small and lets the workers' per-run caches recognise the config by identity.
    client_app = build_client_app(
        partial(config_from_yaml, OmegaConf.to_yaml(cfg)), state_dir=device_state_dir(output_dir)
    )
    init_args = ray_init_args(cfg)
    backend_config = {
        # Flower's default of 2 CPUs per client serialises clients on a 2-core machine.
        "client_resources": {"num_cpus": float(cfg.engine.num_cpus_per_client), "num_gpus": 0.0},
        "init_args": init_args,
    }
    # Before Ray starts: whatever ends this process, even SIGKILL, the reaper then stops every
    # process Ray started (see fl_iot.reaper).
    start_reaper()
    with (
        warnings.catch_warnings(),
        ray_session(init_args, cfg.engine.keep_ray_alive),
        sigterm_handler_kept(),
    ):
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_nodes(cfg),
                backend_config=backend_config,
            )
        except BaseException:
            # Ctrl-C or SIGTERM (raised in this thread), or a crashed Simulation Runtime: the
            # ServerApp's thread would wait for replies that never come, up to round_timeout_s,
            # and keep the process from exiting. Stop it at its next call to the grid and let it
            # write its outputs.
            stop.set()
            server_done.wait(SERVER_STOP_TIMEOUT_S)
            raise
    if not result.summary:
        stop_kept_ray_session()  # whatever went wrong, the next run starts from a fresh session
        raise SimulationError("the simulation ended before the ServerApp reported a result")
    return result


def ray_init_args(cfg: DictConfig) -> dict[str, Any]:
    """The ``ray.init`` arguments Flower's Ray backend gets for the run of ``cfg``.

    A run on this machine alone starts its own Ray with ``engine.num_cpus`` CPUs (this machine's
    count when null). A run attached to a running cluster (:func:`ray_cluster_address`) passes
    no CPU count: Ray refuses one when it connects ("num_cpus and num_gpus must not be
    provided"), and the cluster's size is what each machine's ``ray start --num-cpus`` gave it.
    Either way a ClientApp asks for ``engine.num_cpus_per_client`` CPUs, and Flower starts as
    many actors as every node's CPUs hold (counted per node), so a cluster spreads them over
    all its machines. The address itself is not a config key: it says where a run executes, not
    what it computes, and Ray reads it from the environment anyway.
    """
    if ray_cluster_address() is not None:
        return {"log_to_driver": False}
    num_cpus = cfg.engine.num_cpus or os.cpu_count() or 1
    return {"num_cpus": int(num_cpus), "log_to_driver": False}


def check_engine_resources(cfg: DictConfig) -> None:
    """Refuse a client resource request that Ray could never grant (Flower would wait for ever).

    On a running cluster (:func:`ray_cluster_address`) this machine's CPU count says nothing
    about what the run gets: the request is checked against the CPUs of each of the cluster's
    nodes (:func:`cluster_node_cpus`), since Flower places a ClientApp on one node, and
    ``engine.num_cpus``, which cannot apply there, is refused.

    Raises
    ------
    ConfigError
        If ``engine.num_cpus_per_client`` exceeds the CPUs Ray gets (on a cluster: those of
        every node), ``engine.num_cpus`` is set for a run on a cluster, or the cluster does
        not answer.
    """
    address = ray_cluster_address()
    if address is not None:
        if cfg.engine.num_cpus is not None:
            raise ConfigError(
                f"engine.num_cpus={cfg.engine.num_cpus} cannot apply to the running Ray cluster "
                f"at {RAY_ADDRESS_ENV}={address}: each machine offers the CPUs its `ray start "
                "--num-cpus` gave it; leave engine.num_cpus null, or unset "
                f"{RAY_ADDRESS_ENV} to run on this machine alone"
            )
        node_cpus = cluster_node_cpus(address)
        largest = max(node_cpus, default=0.0)
        if cfg.engine.num_cpus_per_client > largest:
            raise ConfigError(
                f"engine.num_cpus_per_client={cfg.engine.num_cpus_per_client:g} is more than "
                f"any node of the Ray cluster at {RAY_ADDRESS_ENV}={address} offers (CPUs of "
                f"its {len(node_cpus)} alive nodes: {', '.join(f'{c:g}' for c in node_cpus)}): "
                f"no ClientApp could ever be scheduled; choose a value in (0, {largest:g}]"
            )
        log.info(
            "attaching to the Ray cluster at %s: %d nodes, %g CPUs",
            address,
            len(node_cpus),
            sum(node_cpus),
        )
        return
    num_cpus = cfg.engine.num_cpus or os.cpu_count() or 1
    if cfg.engine.num_cpus_per_client > num_cpus:
        raise ConfigError(
            f"engine.num_cpus_per_client={cfg.engine.num_cpus_per_client} is more than the "
            f"{num_cpus} CPUs Ray gets (engine.num_cpus, or this machine's count when null): no "
            "ClientApp could ever be scheduled; choose a value in (0, "
            f"{num_cpus}]"
        )


class StoppableGrid(Grid):
    """The ServerApp's grid, with a stop switch that every call checks.

    Flower's in-memory grid waits for replies in a loop that nothing outside can end, and its
    strategies wait for nodes in another (``sample_nodes``, without a timeout). After the
    simulation's main loop has stopped, both would keep the ServerApp's thread, and with it the
    process, alive. Every call here raises :class:`RunStopped` once ``stop`` is set, and
    :meth:`send_and_receive` is Flower's polling loop with that check in it.
    """

    def __init__(self, grid: Grid, stop: threading.Event) -> None:
        self._grid = grid
        self._stop = stop

    def _check(self) -> None:
        if self._stop.is_set():
            raise RunStopped("the run was stopped before it finished")

    def set_run(self, run: Run) -> None:  # noqa: D102
        self._grid.set_run(run)

    @property
    def run(self) -> Run:  # noqa: D102
        return self._grid.run

    def create_message(  # noqa: D102
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        self._check()
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        self._check()
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        self._check()
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages`` and pull their replies until all came or ``timeout`` passed."""
        interval = float(getattr(self._grid, "pull_interval", 0.1))
        return poll_replies(self, messages, timeout, interval, self._stop.wait)


@contextmanager
def ray_session(init_args: dict[str, Any], keep_alive: bool) -> Iterator[None]:
    """Let the runs of one process share one Ray session when ``keep_alive`` is set.

    Flower's Ray backend starts Ray unless it is already up, and shuts it down after every run:
    about 7 s per run on 2 cores (``ray.init`` plus shutdown), a fifth of a 10-round run of the
    robustness grid. With ``keep_alive``, Flower's shutdown is a no-op for the length of the run,
    so the next run of the process (a Hydra multirun's next job) finds Ray up and Flower skips
    ``ray.init``; Ray's own exit handler stops it when the process ends. The actors are still
    Flower's and still end with each run, so a run's results do not depend on what ran before it.
    A run with other ``ray.init`` arguments, or one that fails, gets a fresh session. On a
    running cluster (:func:`ray_cluster_address`) what is kept is this process's connection to
    it; the cluster itself outlives every run.
    """
    global _kept_ray_init_args
    import ray

    if keep_alive and ray.is_initialized() and _kept_ray_init_args == init_args:
        log.info("reusing the Ray session an earlier run of this process started")
        _kept_ray_init_args = None
    else:
        stop_kept_ray_session()
    if not keep_alive:
        yield
        return
    shutdown = ray.shutdown
    ray.shutdown = _keep_ray_up  # Flower's backend calls ray.shutdown() through the module
    try:
        yield
    except BaseException:
        shutdown()
        raise
    finally:
        ray.shutdown = shutdown
    if ray.is_initialized():
        _kept_ray_init_args = dict(init_args)


@contextmanager
def sigterm_handler_kept() -> Iterator[None]:
    """Put the process's own SIGTERM handler back after ``ray.init`` replaces it.

    ``ray.init`` installs a SIGTERM handler that exits at once, and its core worker then one that
    aborts the process with a stack dump (exit -6), so neither the CLI's clean stop nor the run's
    outputs would survive a ``kill``. Only a handler set in Python (the CLI's) is put back.
    """
    import ray

    previous = signal.getsignal(signal.SIGTERM)
    init = ray.init
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        yield
        return

    def init_keeping_handler(*args: Any, **kwargs: Any) -> Any:
        try:
            return init(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, previous)

    ray.init = init_keeping_handler  # Flower's backend calls ray.init() through the module
    try:
        yield
    finally:
        ray.init = init


def stop_kept_ray_session() -> None:
    """Shut down the Ray session an earlier run left up, if there is one."""
    global _kept_ray_init_args
    import ray

    if _kept_ray_init_args is not None and ray.is_initialized():
        ray.shutdown()
    _kept_ray_init_args = None


def _keep_ray_up(*args: object, **kwargs: object) -> None:
    """Stands in for ``ray.shutdown`` while a run that keeps Ray alive is in progress."""


@lru_cache(maxsize=4)
def _config_from_yaml_text(text: str) -> DictConfig:
    cfg = OmegaConf.create(text)
    assert isinstance(cfg, DictConfig)
    return cfg


def config_from_yaml(text: str, context: object = None) -> DictConfig:
    """The config a worker's ClientApp uses: the same object for the same YAML text."""
    return _config_from_yaml_text(text)


def quiet_flower_logs(level: int = logging.WARNING) -> None:
    """Keep Flower's per-round INFO chatter off the console (fl-iot prints its own progress).

    Flower's logger also has its own console handler; stopping propagation avoids every line
    being printed twice under Hydra's root handler.
    """
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(level)
    flwr_logger.propagate = False
    if not any(isinstance(f, _KnownDeprecationFilter) for f in flwr_logger.filters):
        flwr_logger.addFilter(_KnownDeprecationFilter())


class _KnownDeprecationFilter(logging.Filter):
    """Drop Flower's warning that run_simulation is deprecated: this module is that seam."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation` function is deprecated" not in record.getMessage()
