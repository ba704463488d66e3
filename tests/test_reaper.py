"""The reaper stops what a process started once that process is gone, even after SIGKILL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fl_iot.reaper import POLL_S, descendants, is_running
from tests.conftest import REPO_ROOT
from tests.processes import kill_all, wait_until_gone

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc"),
]


# A parent that starts its reaper, then a child that leaves the session and sets a clean
# environment (as a process that sets its title looks), and a tagged grandchild that its parent
# orphans at once: neither can be found from the parent once the parent is gone.
PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    from fl_iot.reaper import start_reaper
    start_reaper()
    time.sleep(0.5)
    clean = subprocess.Popen(["sleep", "600"], env={}, start_new_session=True)
    orphaner = subprocess.Popen(["sh", "-c", "sleep 600 & echo $!"], stdout=subprocess.PIPE)
    orphan = int(orphaner.stdout.readline())
    orphaner.wait()
    print(clean.pid, orphan, flush=True)
    time.sleep(600)
    """
)


def test_the_reaper_stops_what_a_killed_process_started():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    started: set[int] = set()
    try:
        assert parent.stdout is not None
        clean, orphan = (int(p) for p in parent.stdout.readline().split())
        started = {clean, orphan} | {pid for pid, _ in descendants(parent.pid)}
        time.sleep(2.5 * POLL_S)  # the reaper notes descendants every POLL_S
        assert is_running(clean) and is_running(orphan)

        parent.kill()
        parent.wait()

        assert wait_until_gone(started, 10.0) == set()
    finally:
        kill_all(started, parent.pid)
