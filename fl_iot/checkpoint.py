"""The run checkpoint: everything the server needs to continue a run after its last round.

After every round the server writes ``<run dir>/checkpoint/server.pkl``: the global model, the
round, the resolved config, the strategy object (its reliability tracker, accountant, optimizer
moments and noise generator with it), the scheduler's state (simulated clock, busy devices,
updates in flight, the models they were trained on), the round records so far, the initial
central scores and the process's global random states. ``fl-iot resume=<run dir>`` continues
from it (:func:`fl_iot.server.run_server`), and the final model is bit-identical to that of a run
that was never interrupted. The devices keep their own state next to it, in
``checkpoint/devices`` (:mod:`fl_iot.device_state`).

The file is a pickle, written to a temporary file, flushed to disk and renamed into place: a kill
at any point leaves the previous round's checkpoint or this one, never half of one. A pickle
holds objects by their class, so a checkpoint is read by the fl-iot (and Flower) that wrote it;
it is the run's own file, never something a device sent.
"""

from __future__ import annotations

import importlib
import os
import pickle
import random
import shutil
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

from fl_iot.errors import ConfigError
from fl_iot.records import RoundRecord
from fl_iot.schedule import SchedulerState

CHECKPOINT_DIR = "checkpoint"
SERVER_FILE = "server.pkl"
DEVICE_STATE_DIR = "devices"
FORMAT = 1
"""Version of the checkpoint's layout; a checkpoint of another version is refused."""


@dataclass
class RandomStates:
    """The process-wide generators: Python's ``random``, numpy's legacy one, torch's CPU one.

    The round loop seeds what it samples with per round, and every device seeds its training;
    these are kept as well so that nothing a library draws from them can differ after a resume.
    """

    python: Any
    numpy: Any
    torch: torch.Tensor

    @classmethod
    def capture(cls) -> RandomStates:
        """The current states."""
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state())

    def restore(self) -> None:
        """Make these the current states."""
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)


@dataclass
class ServerCheckpoint:
    """The server's state after ``round`` (see the module)."""

    round: int
    config: dict[str, Any]
    arrays: ArrayRecord
    strategy: Strategy
    scheduler: SchedulerState
    records: list[RoundRecord]
    initial_central: dict[str, float]
    elapsed_s: float
    random_states: RandomStates
    format: int = FORMAT


def checkpoint_dir(run_dir: Path) -> Path:
    """Where a run keeps its checkpoint and its devices' state."""
    return Path(run_dir) / CHECKPOINT_DIR


def device_state_dir(run_dir: Path) -> Path:
    """Where the simulated devices of a run keep their state (:mod:`fl_iot.device_state`)."""
    return checkpoint_dir(run_dir) / DEVICE_STATE_DIR


def clear_checkpoint(run_dir: Path) -> None:
    """Remove the checkpoint and device state of an earlier run in ``run_dir`` (a fresh start)."""
    shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)


def write_checkpoint(run_dir: Path, checkpoint: ServerCheckpoint) -> None:
    """Write ``checkpoint`` atomically, replacing the previous round's."""
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".server-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            _CheckpointPickler(file, protocol=pickle.HIGHEST_PROTOCOL).dump(checkpoint)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, directory / SERVER_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class _CheckpointPickler(pickle.Pickler):
    """Pickles two things plain pickle refuses, as what they stand for.

    - Flower's ``Array`` without the wire chunks it caches once it has been serialised: they are
      memoryviews of the array's own bytes, rebuilt when the array is next sent;
    - a module (Flower's RDP accountant keeps the ``dp_accounting`` modules it loaded) by its
      name, imported again on loading.
    """

    def reducer_override(self, obj: object) -> Any:
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        if type(obj) is Array and "_chunks" in obj.__dict__:
            state = {k: v for k, v in obj.__dict__.items() if k != "_chunks"}
            return _array_from_state, (state,)
        return NotImplemented


def _array_from_state(state: dict[str, Any]) -> Array:
    array = Array.__new__(Array)
    array.__dict__.update(state)
    return array


def read_checkpoint(run_dir: Path) -> ServerCheckpoint:
    """The checkpoint of the run in ``run_dir``.

    Raises
    ------
    ConfigError
        If ``run_dir`` holds no readable checkpoint of this version, saying what it found.
    """
    path = checkpoint_dir(run_dir) / SERVER_FILE
    if not Path(run_dir).is_dir():
        raise ConfigError(
            f"resume={run_dir}: no such directory; give the run directory of an earlier fl-iot "
            "run (the one holding its metrics.jsonl)"
        )
    if not path.is_file():
        raise ConfigError(
            f"resume={run_dir}: no checkpoint there ({path} is missing); a run writes it after "
            "each round it completes, so this run completed none, or is not an fl-iot run "
            "directory"
        )
    try:
        with path.open("rb") as file:
            checkpoint = pickle.load(file)
    except Exception as error:  # a truncated or foreign file
        raise ConfigError(
            f"resume={run_dir}: {path} cannot be read ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(checkpoint, ServerCheckpoint) or checkpoint.format != FORMAT:
        found = getattr(checkpoint, "format", type(checkpoint).__name__)
        raise ConfigError(
            f"resume={run_dir}: {path} is not a checkpoint of format {FORMAT} (found {found!r})"
        )
    return checkpoint
