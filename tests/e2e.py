"""Helpers for end-to-end tests that run the real ``fl-iot`` command or Simulation Engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from tests.conftest import REPO_ROOT

TINY = (
    "scenario.num_devices=4",
    "scenario.num_rounds=2",
    "scenario.fraction_train=1.0",
    "scenario.fraction_evaluate=1.0",
)
"""Overrides that shrink any scenario to a run of a few seconds of training."""


def run_cli(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fl_iot <args>`` from the repository root and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "fl_iot", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def start_cli(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m fl_iot <args>`` in a session of its own, its output into ``log``.

    A session of its own, so that a test can signal or account for the run's whole process
    group (Ray's workers, the reaper) and clean it up.
    """
    with log.open("w") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "fl_iot", *args],
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run_dir_override(path: Path) -> str:
    """The override that puts a single run's outputs in ``path``."""
    return f"hydra.run.dir={path}"


def resolved_config(*overrides: str) -> DictConfig:
    """A freshly composed config with its interpolations resolved (what the apps receive)."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from fl_iot.run_config import compose_config

    GlobalHydra.instance().clear()
    cfg = OmegaConf.create(OmegaConf.to_container(compose_config(overrides), resolve=True))
    assert isinstance(cfg, DictConfig)
    return cfg
