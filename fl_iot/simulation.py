"""The seam to Flower's Simulation Engine: the only module that calls ``run_simulation``.

``flwr.simulation.run_simulation`` is deprecated in Flower 1.42 (``flwr run`` is the future); it
still works and is what lets one Python process run a Hydra multirun sweep, so fl-iot keeps it
behind this one function. ``run_simulation`` does not pass a run-config, so the apps get the
composed config by closure.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fl_iot.client_app import build_client_app
from fl_iot.server import RunResult
from fl_iot.server_app import build_server_app

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
}


log = logging.getLogger(__name__)


class SimulationError(RuntimeError):
    """The simulation ended without the ServerApp finishing its run."""


_kept_ray_init_args: dict[str, Any] | None = None
"""The ``ray.init`` arguments of the Ray session a finished run left up; None if none is."""


def run_in_simulation(cfg: DictConfig, output_dir: Path) -> RunResult:
    """Run the study of ``cfg`` on the Simulation Engine (Ray) with one node per device.

    Parameters
    ----------
    cfg : DictConfig
        Composed, validated and fully resolved config.
    output_dir : Path
        Where the sinks write.
    """
    from flwr.simulation import run_simulation

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    quiet_flower_logs()
    result = RunResult()
    server_app = build_server_app(lambda _: cfg, lambda _: output_dir, result)
    # Flower's Ray backend pickles the ClientApp factory with every message. Capturing the config
    # as YAML text, turned back into one cached DictConfig per worker, keeps each message's
    # payload small and lets the workers' per-run caches recognise the config by identity.
    client_app = build_client_app(partial(config_from_yaml, OmegaConf.to_yaml(cfg)))
    num_cpus = cfg.engine.num_cpus or os.cpu_count() or 1
    init_args: dict[str, Any] = {"num_cpus": int(num_cpus), "log_to_driver": False}
    backend_config = {
        # Flower's default of 2 CPUs per client serialises clients on a 2-core machine.
        "client_resources": {"num_cpus": float(cfg.engine.num_cpus_per_client), "num_gpus": 0.0},
        "init_args": init_args,
    }
    with warnings.catch_warnings(), ray_session(init_args, cfg.engine.keep_ray_alive):
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.scenario.num_devices,
            backend_config=backend_config,
        )
    if not result.summary:
        stop_kept_ray_session()  # whatever went wrong, the next run starts from a fresh session
        raise SimulationError("the simulation ended before the ServerApp reported a result")
    return result


@contextmanager
def ray_session(init_args: dict[str, Any], keep_alive: bool) -> Iterator[None]:
    """Let the runs of one process share one Ray session when ``keep_alive`` is set.

    Flower's Ray backend starts Ray unless it is already up, and shuts it down after every run:
    about 7 s per run on 2 cores (``ray.init`` plus shutdown), a fifth of a 10-round run of the
    robustness grid. With ``keep_alive``, Flower's shutdown is a no-op for the length of the run,
    so the next run of the process (a Hydra multirun's next job) finds Ray up and Flower skips
    ``ray.init``; Ray's own exit handler stops it when the process ends. The actors are still
    Flower's and still end with each run, so a run's results do not depend on what ran before it.
    A run with other ``ray.init`` arguments, or one that fails, gets a fresh session.
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
