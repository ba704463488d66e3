"""A run that is killed, interrupted or stopped leaves nothing running and says what happened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fl_iot.reaper import descendants
from fl_iot.simulation import RunStopped, StoppableGrid
from tests.e2e import start_cli
from tests.processes import kill_all, session_members, wait_until_gone

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

LEFTOVER_TIMEOUT_S = 15.0


class WaitingGrid:
    """A grid whose nodes never answer (only what StoppableGrid calls)."""

    pull_interval = 0.05

    def __init__(self) -> None:
        self.replies: list[SimpleNamespace] = []

    def push_messages(self, messages):
        return [f"id-{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        replies, self.replies = self.replies, []
        return replies


def test_a_stopped_grid_ends_a_wait_for_replies_that_would_last_for_ever():
    stop = threading.Event()
    grid = StoppableGrid(WaitingGrid(), stop)  # type: ignore[arg-type]
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            grid.send_and_receive([object(), object()], timeout=None)  # type: ignore[list-item]
        except RunStopped as error:
            raised.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.2)
    stop.set()
    waiter.join(timeout=2.0)

    assert not waiter.is_alive() and len(raised) == 1
    with pytest.raises(RunStopped):
        grid.get_node_ids()


def test_a_stoppable_grid_returns_the_replies_like_flowers_grid():
    inner = WaitingGrid()
    reply = SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id="id-0"))
    inner.replies = [reply]
    grid = StoppableGrid(inner, threading.Event())  # type: ignore[arg-type]

    assert grid.send_and_receive([object()], timeout=5.0) == [reply]  # type: ignore[list-item]
    started = time.monotonic()
    assert list(grid.send_and_receive([object()], timeout=0.3)) == []  # type: ignore[list-item]
    assert 0.25 < time.monotonic() - started < 2.0


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("signum", "to_group"),
    [
        (signal.SIGKILL, False),  # kill -9 <pid>: nothing of fl-iot runs, the reaper does the work
        (signal.SIGINT, True),  # Ctrl-C: the terminal signals the whole foreground group
        (signal.SIGTERM, False),  # kill <pid>
    ],
)
def test_a_run_stopped_by_a_signal_leaves_nothing_running(
    shared_data_root, tmp_path, signum, to_group
):
    run_dir, log = tmp_path / "run", tmp_path / "output.log"
    run = start_cli(
        *(
            "scenario=smart_home",
            "scenario.num_rounds=50",
            "tracking.sinks=[console,summary,jsonl]",
        ),
        f"hydra.run.dir={run_dir}",
        log=log,
        env={"FL_IOT_DATA_ROOT": str(shared_data_root)},
    )
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while "[round 1/50]" not in log.read_text():  # Ray and its actors are up by then
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no round within 300 s"
            seen |= session_members(run.pid) | {pid for pid, _ in descendants(run.pid)}
            time.sleep(0.5)
        seen |= session_members(run.pid) | {pid for pid, _ in descendants(run.pid)}
        assert len(seen) > 5, seen  # Ray's processes and the reaper

        (os.killpg if to_group else os.kill)(run.pid, signum)
        try:
            returncode = run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 60 s later:\n{log.read_text()[-5000:]}") from None

        left = wait_until_gone(seen | session_members(run.pid), LEFTOVER_TIMEOUT_S)
        assert left == set(), [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in left]
        if signum == signal.SIGKILL:
            return
        output_text = log.read_text()
        assert returncode == 128 + signum, output_text[-3000:]
        assert "Traceback" not in output_text, output_text[-6000:]
        assert output_text.strip().splitlines()[-1] == (
            f"fl-iot: interrupted by {signal.Signals(signum).name}; the outputs so far are in "
            f"{run_dir}"
        )
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "failed"
        assert "stopped" in summary["error"]
    finally:
        kill_all(seen, run.pid)
        run.kill()
        run.wait()
