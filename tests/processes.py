"""Helpers for tests that check which processes a run leaves behind (Linux ``/proc``)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from fl_iot.reaper import is_running, process_stat


def session_members(sid: int) -> set[int]:
    """The running processes of session ``sid``."""
    members = set()
    for entry in Path("/proc").iterdir():
        stat = process_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None and int(stat[3]) == sid and stat[0] != "Z":
            members.add(int(entry.name))
    return members


def wait_until_gone(pids: set[int], timeout_s: float) -> set[int]:
    """Wait up to ``timeout_s`` for ``pids`` to stop running; return those still running."""
    deadline = time.monotonic() + timeout_s
    while (left := {p for p in pids if is_running(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def kill_all(pids: set[int], group: int) -> None:
    """SIGKILL ``pids`` and the process group ``group`` (a test's clean-up)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(group, signal.SIGKILL)
