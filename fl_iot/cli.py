"""The ``fl-iot`` command: a Hydra app that runs one federated study per job.

    fl-iot                                   # the default scenario, healthcare_wearables
    fl-iot scenario=vehicle_fleet strategy=trusted attack=alie attack.fraction=0.2
    fl-iot -m strategy=fedavg,fedmedian seed=0,1,2     # a multirun sweep, one process

A user error (bad value, unknown plugin name, missing dataset) prints one message naming the bad
value and the valid choices, and exits with status 2 without a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from fl_iot.config import register_configs, to_container, validate_config
from fl_iot.errors import EXIT_CODE_USER_ERROR, FlIotError
from fl_iot.run_config import CONF_DIR
from fl_iot.tracking.base import jsonable


def run_study(cfg: DictConfig, output_dir: Path) -> dict[str, object]:
    """Validate ``cfg``, load its data, run it on the Simulation Engine; return the summary."""
    from fl_iot.budgets import check_device_memory
    from fl_iot.device_runtime import run_context
    from fl_iot.server import build_strategy
    from fl_iot.simulation import run_in_simulation

    validate_config(cfg)
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(resolved, DictConfig)
    # Build the strategy, load the data and check device budgets before Ray starts: such errors
    # surface in seconds.
    build_strategy(resolved)
    check_device_memory(run_context(resolved))
    return run_in_simulation(resolved, output_dir).summary


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra's task function; returns the final central macro-F1 (for sweepers)."""
    hydra_cfg = HydraConfig.get()
    with open_dict(cfg):
        cfg.choices = {
            group: str(option)
            for group, option in hydra_cfg.runtime.choices.items()
            if not any(c in group for c in "/@") and not group.startswith("hydra") and option
        }
        if hydra_cfg.mode == RunMode.MULTIRUN and cfg.tracking.wandb.group is None:
            cfg.tracking.wandb.group = Path(hydra_cfg.sweep.dir).name
    output_dir = Path(hydra_cfg.runtime.output_dir)
    if cfg.engine.skip_completed and (previous := completed_summary(cfg, output_dir)):
        print(f"fl-iot: {output_dir} already holds this completed run; skipped", file=sys.stderr)
        return _final_macro_f1(previous)
    try:
        summary = run_study(cfg, output_dir)
    except FlIotError as error:
        print(f"fl-iot: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CODE_USER_ERROR) from None
    except Exception as error:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        # One failed job must not cost a sweep its other jobs; its summary.json says "failed".
        print(
            f"fl-iot: job {hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)}) failed: "
            f"{type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return None
    return _final_macro_f1(summary)


def completed_summary(cfg: DictConfig, output_dir: Path) -> dict[str, Any] | None:
    """The summary of a completed earlier run of exactly ``cfg`` in ``output_dir``, if any."""
    path = output_dir / "summary.json"
    if not path.is_file():
        return None
    summary: dict[str, Any] = json.loads(path.read_text())
    same = _comparable(summary.get("config", {})) == _comparable(jsonable(to_container(cfg)))
    return summary if summary.get("status") == "completed" and same else None


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    # Whether to skip, and whether Ray outlives the run, are not part of what a run computes.
    engine = {
        k: v
        for k, v in config.get("engine", {}).items()
        if k not in ("skip_completed", "keep_ray_alive")
    }
    return {**config, "engine": engine}


def _final_macro_f1(summary: dict[str, Any]) -> float | None:
    value = summary.get("final", {}).get("central", {}).get("macro_f1")
    return float(value) if value is not None else None


def main() -> None:
    """Console-script entry point."""
    register_configs()
    hydra_main()


if __name__ == "__main__":
    main()
