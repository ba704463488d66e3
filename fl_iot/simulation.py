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
from functools import lru_cache, partial
from pathlib import Path

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


class SimulationError(RuntimeError):
    """The simulation ended without the ServerApp finishing its run."""


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
    backend_config = {
        # Flower's default of 2 CPUs per client serialises clients on a 2-core machine.
        "client_resources": {"num_cpus": float(cfg.engine.num_cpus_per_client), "num_gpus": 0.0},
        "init_args": {"num_cpus": int(num_cpus), "log_to_driver": False},
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.scenario.num_devices,
            backend_config=backend_config,  # type: ignore[arg-type]
        )
    if not result.summary:
        raise SimulationError("the simulation ended before the ServerApp reported a result")
    return result


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
