"""Stop every process a run started once the run's process is gone, however it ended.

Ray's head processes (GCS, raylet, dashboard) die with the process that called ``ray.init`` (Ray
starts them with ``PR_SET_PDEATHSIG``), but what the raylet starts in turn does not: after a
``kill -9`` of ``fl-iot`` the dashboard agent and the runtime-env agent noticed the raylet's death
after about 2 s and then spent 60 s trying to report it to the dead GCS, and the ClientApp actors
lived 3 s more. Nothing in the killed process can run, so a separate process has to do it.

:func:`start_reaper` starts a small reaper process and marks the caller's environment with a tag
that every process it starts inherits (Ray's processes and workers, W&B's service). While the
caller lives, the reaper notes the caller's descendants every :data:`POLL_S`: an orphan is
reparented and no longer shows whose it was, and a process that sets its title (Ray's agents
do) overwrites the environment that ``/proc`` shows. Once the caller is gone (the end of a pipe
only the caller holds, or the reaper itself reparented), it sends SIGTERM to every noted process
still running and every process that carries the tag, and SIGKILL to those left after
:data:`GRACE_S`. Linux only (it reads ``/proc``); elsewhere it is a no-op.

Run as ``python -m fl_iot.reaper <tag> <parent pid>``; it imports nothing of fl-iot.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

TAG_VARIABLE = "FL_IOT_REAPER_TAG"
"""The environment variable that marks the processes of one ``fl-iot`` process."""

GRACE_S = 2.0
"""How long the reaper waits between SIGTERM and SIGKILL."""

POLL_S = 0.5
"""How often the reaper looks at the caller and its descendants."""

_reaper: subprocess.Popen[bytes] | None = None


def start_reaper() -> str | None:
    """Start this process's reaper (once per process) and return the tag it stops by.

    Call it before starting the processes it should stop: they find the tag in the environment
    they inherit. Returns None where there is no ``/proc`` to find them by.
    """
    global _reaper
    if not Path("/proc/self/environ").exists():
        return None
    if _reaper is not None and _reaper.poll() is None:
        return os.environ[TAG_VARIABLE]
    tag = f"{os.getpid()}-{secrets.token_hex(8)}"
    os.environ[TAG_VARIABLE] = tag
    _reaper = subprocess.Popen(
        [sys.executable, "-m", "fl_iot.reaper", tag, str(os.getpid())],
        stdin=subprocess.PIPE,  # this process holds the only write end: EOF means it is gone
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # out of the terminal's process group: Ctrl-C does not reach it
    )
    return tag


def tagged_processes(tag: str, exclude: int | None = None) -> list[int]:
    """The ids of the processes whose environment in ``/proc`` holds ``tag`` (this user's)."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for pid in _pids():
        if pid == exclude:
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if needle in environ.split(b"\0"):
            found.append(pid)
    return found


def descendants(root: int) -> set[tuple[int, str]]:
    """``(pid, start time)`` of every process below ``root`` in the process tree.

    The start time tells a process from a later one that got the same id.
    """
    children: dict[int, list[tuple[int, str]]] = {}
    for pid in _pids():
        stat = process_stat(pid)
        if stat is not None:
            children.setdefault(int(stat[1]), []).append((pid, stat[19]))
    found: set[tuple[int, str]] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child[0])
    return found


def stop_processes(noted: set[tuple[int, str]], tag: str | None, grace_s: float = GRACE_S) -> int:
    """SIGTERM the noted and the tagged processes, SIGKILL those left after ``grace_s``.

    The descendants of each are stopped too. Repeats until a scan finds none, so that a process
    started while the others were being stopped is stopped too. Returns how many it stopped.
    """
    stopped: set[int] = set()
    for _ in range(10):
        targets = {pid for pid, started in noted if _started(pid) == started}
        if tag is not None:
            targets.update(tagged_processes(tag, exclude=os.getpid()))
        for pid in list(targets):
            targets.update(p for p, _ in descendants(pid))
        targets.discard(os.getpid())
        pids = [p for p in targets if is_running(p)]
        if not pids:
            break
        stopped.update(pids)
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(is_running(p) for p in pids):
            time.sleep(0.05)
        _signal_all([p for p in pids if is_running(p)], signal.SIGKILL)
    return len(stopped)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def process_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name: state, ppid, ..."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:  # plain reads: the reaper polls
            data = file.read()
    except OSError:
        return None
    return data.rsplit(b")", 1)[-1].decode("ascii", "replace").split()


def _started(pid: int) -> str | None:
    stat = process_stat(pid)
    return stat[19] if stat is not None else None


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):  # already gone
            os.kill(pid, signum)


def is_running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead and waiting for its parent, does not)."""
    stat = process_stat(pid)
    return stat is not None and stat[0] != "Z"


def watch_parent(parent: int) -> set[tuple[int, str]]:
    """Note ``parent``'s descendants until it is gone; return all that were ever noted.

    ``parent`` is gone when stdin (its pipe) is at EOF or this process has been reparented.
    """
    noted: set[tuple[int, str]] = set()
    while os.getppid() == parent:
        noted.update(descendants(parent))
        readable, _, _ = select.select([sys.stdin.fileno()], [], [], POLL_S)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            break
    noted.discard((os.getpid(), _started(os.getpid()) or ""))
    return noted


def main(argv: list[str]) -> None:
    """``python -m fl_iot.reaper <tag> <parent pid>``."""
    tag, parent = argv[0], int(argv[1])
    # The terminal's signals are for the run; the reaper's work starts when the run is gone.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    stop_processes(watch_parent(parent), tag)


if __name__ == "__main__":
    main(sys.argv[1:])
