"""The ``fl-iot`` command: a Hydra app that runs one federated study per job.

    fl-iot                                   # the default scenario, healthcare_wearables
    fl-iot scenario=vehicle_fleet strategy=trusted attack=alie attack.fraction=0.2
    fl-iot -m strategy=fedavg,fedmedian seed=0,1,2     # a multirun sweep, one process

A user error (bad value, unknown plugin name, missing dataset, unwritable output directory)
prints one message naming the bad value and the valid choices, and exits with status 2 without a
traceback, before any data is loaded or Ray starts. A run that goes through without producing a
usable model (no update aggregated in any round, or a diverged model) exits with 3, SIGINT and
SIGTERM with 130 and 143; :mod:`fl_iot.errors` has the whole table and the rule for sweeps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from fl_iot.config import register_configs, to_container, validate_config
from fl_iot.errors import (
    EXIT_CODE_RUN_FAILED,
    EXIT_CODE_USER_ERROR,
    ConfigError,
    FlIotError,
    Interrupted,
    RunFailed,
)
from fl_iot.records import RunSummary
from fl_iot.run_config import CONF_DIR
from fl_iot.tracking.base import jsonable

if TYPE_CHECKING:  # importing Flower here would slow down every bad-input error
    from flwr.app import ArrayRecord


def run_study(cfg: DictConfig, output_dir: Path, resume: bool = False) -> dict[str, object]:
    """Validate ``cfg``, load its data, run it on the Simulation Engine; return the summary.

    With ``resume``, continue the run whose checkpoint ``output_dir`` holds (``cfg`` is then
    that checkpoint's config, :func:`resumed_run`).

    Raises
    ------
    ConfigError
        For bad input, before Ray starts.
    RunFailed
        If the run went through without producing a usable model (see :func:`judge_run`), or
        its nodes did not answer the roll call; the run's outputs are written by then.
    """
    from fl_iot.budgets import check_device_memory
    from fl_iot.device_runtime import run_context
    from fl_iot.roster import RosterError
    from fl_iot.server import initial_arrays
    from fl_iot.simulation import check_engine_resources, run_in_simulation

    validate_config(cfg)
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(resolved, DictConfig)
    # Build the strategy and the model, load the data and check device budgets before Ray
    # starts: such errors surface in seconds.
    check_engine_resources(resolved)
    check_strategy(resolved)
    try:
        run = run_context(resolved)
    except InstantiationException as error:
        raise ConfigError(f"scenario.model cannot be built: {_one_line(error)}") from None
    try:
        initial = initial_arrays(run)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"scenario.model ({resolved.scenario.model.get('_target_')}) cannot be built for "
            f"input shape {list(run.data.info.input_shape)} and "
            f"{run.data.info.num_classes} classes: {_one_line(error)}"
        ) from None
    check_device_memory(run)
    try:
        result = run_in_simulation(resolved, output_dir, resume=resume)
    except RosterError as error:  # the ServerApp has written summary.json ("failed") by then
        raise RunFailed(
            f"{error} (engine.roll_call_timeout_s={resolved.engine.roll_call_timeout_s:g})"
        ) from None
    assert result.summary is not None  # run_in_simulation raises without one
    reason = judge_run(result.summary, initial, result.arrays)
    if reason:
        raise RunFailed(reason)
    return result.summary.to_dict()


def check_strategy(cfg: DictConfig) -> None:
    """Build the strategy once, turning the errors of its constructor into a ConfigError.

    ``strategy._target_`` may name any importable class, so its own checks are the last word on
    its options: a missing or unknown keyword, or a value its constructor refuses. An option that
    is an object of its own (``strategy.thresholds``) is built first, so that the message names
    its path.
    """
    from hydra.utils import instantiate

    from fl_iot.server import build_strategy

    for key, node in cfg.strategy.items():
        if isinstance(node, DictConfig) and "_target_" in node:
            try:
                instantiate(node)
            except (InstantiationException, TypeError, ValueError) as error:
                raise ConfigError(
                    f"strategy.{key} ({node._target_}) refused its options: {_one_line(error)}"
                ) from None
    target = cfg.strategy.get("_target_")
    try:
        build_strategy(cfg)
    except FlIotError:
        raise
    except (InstantiationException, TypeError, ValueError) as error:
        raise ConfigError(f"strategy {target!r} refused its options: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    """``Type: first line`` of an error, or of its cause for Hydra's instantiation wrapper."""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    text = " ".join(line.strip() for line in str(error).strip().splitlines())
    return f"{type(error).__name__}: {text}".strip()


def judge_run(summary: RunSummary, initial: ArrayRecord, final: ArrayRecord | None) -> str | None:
    """Why a run that went through all its rounds failed, or None if its model is usable.

    A run fails when its final global model has non-finite weights (it diverged: every score of
    such a model is an artefact of argmax), or when it is still the initial model (no round
    aggregated any update: every device failed, declined or was refused, or the strategy declined
    to aggregate every round). Anything less, some rounds lost or some devices failing, is a
    result, recorded per round in ``metrics.jsonl`` and ``summary.json``.
    """
    if final is None:
        return None
    arrays = {key: np.asarray(final[key].numpy()) for key in final}
    if not all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind in "fc"):
        return "the final global model has non-finite weights: training diverged"
    if set(arrays) == set(initial) and all(
        np.array_equal(arrays[key], initial[key].numpy()) for key in arrays
    ):
        clients, errors = summary.clients, summary.errors
        return (
            "no round aggregated an update, the final model is the initial one: "
            f"{clients.replied} of {clients.sampled} sampled devices replied "
            f"({clients.failed} failed, {clients.declined} declined, {clients.missing} missing)"
            + (f"; first error: {errors[0]}" if errors else "")
            + "; each device's error is in metrics.jsonl"
        )
    return None


@dataclass(frozen=True)
class JobFailure:
    """One failed job of a multirun: its number, overrides, exit code and what happened."""

    num: int
    overrides: str
    exit_code: int
    message: str


_sweep_failures: list[JobFailure] = []
"""The failed jobs of the multirun this process runs (the CLI reports them at the end)."""


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra's task function; returns the final central macro-F1 (for sweepers)."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    with open_dict(cfg):
        cfg.choices = {
            group: str(option)
            for group, option in hydra_cfg.runtime.choices.items()
            if not any(c in group for c in "/@") and not group.startswith("hydra") and option
        }
        if multirun and cfg.tracking.wandb.group is None:
            cfg.tracking.wandb.group = Path(hydra_cfg.sweep.dir).name
    output_dir = Path(hydra_cfg.runtime.output_dir)
    resume = cfg.get("resume") is not None
    if resume:
        try:
            resumed = resumed_run(str(cfg.resume), list(hydra_cfg.overrides.task))
        except FlIotError as error:
            if multirun:
                raise
            print(f"fl-iot: error: {error}", file=sys.stderr)
            raise SystemExit(EXIT_CODE_USER_ERROR) from None
        if resumed is None:
            return None
        cfg, output_dir = resumed
    if cfg.engine.skip_completed and (previous := completed_summary(cfg, output_dir)):
        print(f"fl-iot: {output_dir} already holds this completed run; skipped", file=sys.stderr)
        return _final_macro_f1(previous)
    try:
        summary = run_study(cfg, output_dir, resume=resume)
    except Interrupted as interrupt:
        _exit_now(
            f"fl-iot: {interrupt}; the outputs so far are in {output_dir}", interrupt.exit_code
        )
    except Exception as error:
        if isinstance(error, FlIotError):
            code, message = EXIT_CODE_USER_ERROR, f"error: {error}"
        elif isinstance(error, RunFailed):
            code, message = EXIT_CODE_RUN_FAILED, f"run failed: {error}; outputs in {output_dir}"
        elif multirun:
            # One failed job must not cost a sweep its other jobs; its summary.json says "failed".
            code, message = 1, f"{type(error).__name__}: {error}"
        else:
            raise  # a defect: the traceback is what helps
        if not multirun:
            print(f"fl-iot: {message}", file=sys.stderr)
            raise SystemExit(code) from None
        overrides = " ".join(hydra_cfg.overrides.task)
        _sweep_failures.append(JobFailure(hydra_cfg.job.num, overrides, code, message))
        print(f"fl-iot: job {hydra_cfg.job.num} ({overrides}) failed: {message}", file=sys.stderr)
        return None
    return _final_macro_f1(summary)


def resumed_run(run_dir: str, overrides: list[str]) -> tuple[DictConfig, Path] | None:
    """The config and directory of the run that ``resume=<run_dir>`` continues.

    ``None`` (after saying so) when that run has already completed: there is nothing to do.

    Raises
    ------
    ConfigError
        If other overrides come with ``resume`` (the run's config is its checkpoint's), or the
        directory holds no readable checkpoint.
    """
    from fl_iot.checkpoint import read_checkpoint

    others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "resume"]
    if others:
        raise ConfigError(
            f"resume={run_dir} continues that run with the config it was started with; drop "
            f"the other overrides ({' '.join(others)}), or start a new run without resume"
        )
    directory = Path(run_dir).resolve()
    checkpoint = read_checkpoint(directory)
    cfg = OmegaConf.create(checkpoint.config)
    assert isinstance(cfg, DictConfig)
    summary = directory / "summary.json"
    num_rounds = int(cfg.scenario.num_rounds)
    completed = summary.is_file() and json.loads(summary.read_text()).get("status") == "completed"
    if checkpoint.round >= num_rounds and completed:
        print(
            f"fl-iot: {directory} has completed all {num_rounds} rounds; nothing to resume",
            file=sys.stderr,
        )
        return None
    print(
        f"fl-iot: resuming {directory} after round {checkpoint.round} of {num_rounds}",
        file=sys.stderr,
    )
    return cfg, directory


class OutputDirCheck(Callback):
    """Refuse an output directory that cannot be created or written, before the run starts.

    Registered in ``conf/config.yaml`` (``hydra.callbacks``). Hydra would otherwise fail with a
    traceback from ``mkdir`` where it sets up the job. Hydra turns a callback's exceptions into
    warnings, so the refusal is printed here and ends the process with :class:`SystemExit`.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        _exit_unless_writable(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        _exit_unless_writable(config.hydra.sweep.dir, "hydra.sweep.dir")


def _exit_unless_writable(path: object, key: str) -> None:
    try:
        check_output_dir(path, key)
    except ConfigError as error:
        print(f"fl-iot: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CODE_USER_ERROR) from None


def check_output_dir(path: object, key: str) -> None:
    """Create ``path`` (as Hydra would) and check that a file can be written in it.

    Raises
    ------
    ConfigError
        Naming ``key`` and ``path`` and saying why it cannot be used.
    """
    directory = Path(str(path))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise ConfigError(
            f"{key}={directory} cannot hold the run's outputs: {error.strerror or error}; "
            f"choose a writable directory ({key}=<path>)"
        ) from None


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


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    """Stop the run as Ctrl-C does; a second signal ends the process at once.

    The SIGINT and SIGTERM handler of fl-iot's commands: raises :class:`Interrupted` in the
    main thread.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # The messages in flight fail as Ray stops, and Flower logs each with its traceback, which
    # would bury the one line that says what happened.
    logging.getLogger("flwr").setLevel(logging.CRITICAL + 1)
    raise Interrupted(signum, signal.Signals(signum).name)


def _exit_now(message: str, code: int) -> NoReturn:
    """Print ``message``, flush every log and end the process with ``code`` at once.

    After an interrupt, the run's outputs are written and Ray is shut down by the time this is
    called, but Flower's message workers may still wait in ``ray.get`` for actors the signal
    ended; the interpreter would join those threads at exit for ever. What they were doing is
    lost anyway, and the reaper stops any process left.
    """
    print(message, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _print_hydra_error(error: CompactHydraException) -> None:
    """Print a Hydra composition error the way Hydra does: its message and OmegaConf's cause."""
    print(str(error), file=sys.stderr)
    if isinstance(error.__cause__, OmegaConfBaseException):
        print(str(error.__cause__), file=sys.stderr)


@contextlib.contextmanager
def user_errors_exit(prog: str) -> Iterator[None]:
    """Turn a user error into its one message and exit status 2, without a traceback.

    A :class:`FlIotError` prints ``<prog>: error: <message>``; a Hydra composition error (a bad
    override) prints as Hydra does (:data:`~fl_iot.errors.EXIT_CODE_USER_ERROR`). For
    fl-iot's commands.
    """
    try:
        yield
    except FlIotError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CODE_USER_ERROR) from None
    except CompactHydraException as error:
        _print_hydra_error(error)
        raise SystemExit(EXIT_CODE_USER_ERROR) from None


def main() -> None:
    """Console-script entry point: the exit codes of :mod:`fl_iot.errors`."""
    register_configs()
    _sweep_failures.clear()
    signal.signal(signal.SIGINT, raise_interrupted)
    signal.signal(signal.SIGTERM, raise_interrupted)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the user asked for Hydra's raw tracebacks
        hydra_main()
    else:
        # Let errors reach this function instead of Hydra's reporter, which prints a traceback
        # for anything but its own composition errors and exits with 1 for all of them.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            with user_errors_exit("fl-iot"):
                hydra_main()
        except Interrupted as interrupt:
            _exit_now(f"fl-iot: {interrupt}", interrupt.exit_code)
        finally:
            del os.environ["HYDRA_FULL_ERROR"]
    if _sweep_failures:
        first = _sweep_failures[0]
        print(
            f"fl-iot: {len(_sweep_failures)} job(s) of the sweep failed: "
            + ", ".join(str(f.num) for f in _sweep_failures)
            + f"; exit code of the first (job {first.num}): {first.exit_code}",
            file=sys.stderr,
        )
        raise SystemExit(first.exit_code)


if __name__ == "__main__":
    main()
