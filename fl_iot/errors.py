"""User-facing errors and the ``fl-iot`` command's exit codes.

Every error a user can cause by configuration or input derives from :class:`FlIotError`
(:mod:`clients.errors`, where the plugins that raise them find it too). The CLI prints its
message, without a traceback, and exits with :data:`EXIT_CODE_USER_ERROR`.

Exit codes of ``fl-iot``:

====  ==============================================================================================
0     every run completed and produced a usable model
1     an unexpected error (a defect in fl-iot or a library): the traceback is printed
2     bad input (config value, unknown name, missing dataset, unwritable output directory),
      found before any data is loaded or Ray starts: one message, no traceback
3     a run went through and failed (:class:`RunFailed`): no round aggregated any update (every
      device failed or declined, or the strategy refused every round), or the final global model
      has non-finite weights (it diverged). Its outputs (``summary.json``, ``metrics.jsonl``,
      ...) are kept, and one line says what happened and where they are
130   interrupted by SIGINT (Ctrl-C); 143 by SIGTERM (128 + the signal's number, as shells do).
      The run stops, its outputs so far are kept (``summary.json`` says ``failed``) and Ray is
      stopped; a second signal ends the process at once
====  ==============================================================================================

A multirun (``fl-iot -m``) runs every job even when some fail, prints one line per failed job
and a count at the end, and exits with the code of its first failed job (0 if none failed).
"""

from __future__ import annotations

from collections.abc import Iterable

from clients.errors import ConfigError, FlIotError, UnknownNameError

__all__ = [
    "EXIT_CODE_RUN_FAILED",
    "EXIT_CODE_SIGNAL_BASE",
    "EXIT_CODE_USER_ERROR",
    "ConfigError",
    "DatasetNotFoundError",
    "FlIotError",
    "Interrupted",
    "RunFailed",
    "UnknownNameError",
]

EXIT_CODE_USER_ERROR = 2
EXIT_CODE_RUN_FAILED = 3
EXIT_CODE_SIGNAL_BASE = 128


class DatasetNotFoundError(FlIotError, FileNotFoundError):
    """A dataset's files are not where the loader looked."""

    def __init__(self, dataset: str, looked_in: Iterable[str], how_to_get: str) -> None:
        places = "\n".join(f"  - {place}" for place in looked_in)
        super().__init__(f"dataset {dataset!r} not found. Looked in:\n{places}\n{how_to_get}")


class RunFailed(Exception):  # noqa: N818 (a run outcome, named like the CLI reports it)
    """A run went through all its rounds without producing a usable model.

    Not a :class:`FlIotError`: the config was valid, the run happened and its outputs exist.
    """


class Interrupted(KeyboardInterrupt):
    """The process received SIGINT or SIGTERM; raised in the main thread by the CLI's handler.

    A :class:`KeyboardInterrupt`, so that code which cleans up after Ctrl-C (Flower's simulation
    loop, Ray) does the same for SIGTERM.
    """

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(f"interrupted by {name}")
        self.signum = signum
        self.name = name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process a signal ended."""
        return EXIT_CODE_SIGNAL_BASE + self.signum
