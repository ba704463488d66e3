"""Resume: a run interrupted inside a round continues from its checkpoint, bit-identically.

In process (no Ray): the run is stopped in the middle of a round's training, after some devices
trained and saved their state for it and before the server checkpointed it, which is where a
``kill -9`` hurts most. The resumed run gets nodes with other ids, as a new Flower run does. The
``kill -9`` of a real ``fl-iot`` process on Ray is ``test_cli_resume.py``'s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from omegaconf import DictConfig

from clients.compression import RESIDUAL
from fl_iot.checkpoint import device_state_dir, read_checkpoint
from fl_iot.client_app import build_client_app
from fl_iot.device_state import DeviceStateStore
from fl_iot.errors import ConfigError
from fl_iot.server import run_server
from tests.e2e import resolved_config
from tests.in_process_grid import InProcessGrid
from tests.wandb_records import offline_runs

TINY = (
    "scenario.num_devices=6",
    "scenario.num_rounds=4",
    "scenario.fraction_train=0.5",
    "scenario.fraction_evaluate=0.5",
    "tracking.sinks=[jsonl,summary,checkpoint]",
)

# Wall-clock measurements: the only figures a resumed run may not share with the whole run.
TIMING = {"round_time_s", "elapsed_s", "wall-time-s", "compute-time-s", "max_compute_time_s"}


class Killed(BaseException):
    """Stands in for the signal that ends the process in the middle of a round."""


class KilledGrid(InProcessGrid):
    """Delivers messages until round ``kill_round``'s ``after``-th training, then dies."""

    def __init__(self, *args: object, kill_round: int, after: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.kill_round, self.after, self.delivered = kill_round, after, 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for message in messages:
            config = message.content.get("config")
            server_round = config.get("server-round") if isinstance(config, ConfigRecord) else 0
            if message.metadata.message_type == "train" and server_round == self.kill_round:
                if self.delivered == self.after:
                    raise Killed
                self.delivered += 1
            replies.extend(super().send_and_receive([message], timeout=timeout))
        return replies


class RenumberedGrid(InProcessGrid):
    """The same devices on nodes with other ids: a resumed run is a new Flower run."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        renumbered = {node: node + 5000 for node in self.node_ids}
        self.node_ids = [renumbered[n] for n in self.node_ids]
        self.contexts = {renumbered[n]: c for n, c in self.contexts.items()}
        for node, context in self.contexts.items():
            context.node_id = node


def composed(*overrides: str) -> DictConfig:
    return resolved_config(*TINY, *overrides)


def run(cfg: DictConfig, out: Path, grid_type: type[InProcessGrid] = InProcessGrid, **grid_args):
    app = build_client_app(lambda _: cfg, state_dir=device_state_dir(out))
    grid = grid_type(app, cfg.scenario.num_devices, **grid_args)
    return run_server(grid, cfg, out, resume=grid_type is RenumberedGrid)


def records(out: Path) -> list[dict]:
    """The run's round records without wall-clock timings."""
    return [strip(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def assert_same_records(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a == b, differences(a, b, f"round {b['round']}")


def differences(a, b, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b))
            for d in differences(a.get(k), b.get(k), f"{path}.{k}")
        ]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def assert_same_model(a: Path, b: Path) -> None:
    first = torch.load(a / "model.pt", weights_only=True)
    second = torch.load(b / "model.pt", weights_only=True)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key].numpy(), second[key].numpy())
        assert first[key].dtype == second[key].dtype


SCENARIOS = {
    "trusted": ("strategy=trusted",),
    "fedbuff-realistic": (
        "fleet=realistic",
        "rounds=fedbuff",
        "rounds.buffer_size=2",
        "strategy=trusted",
        "scenario.num_rounds=5",
    ),
    "deadline-realistic-stale": (
        "fleet=realistic",
        "rounds=deadline",
        "rounds.late_updates=stale",
        "strategy=reliability",
    ),
    "local-dp": ("privacy=local_dp", "scenario.num_rounds=3"),
    "topk-error-feedback-qsgd-downlink": (
        "compression=topk",
        "+compression.downlink={codec:qsgd,bits:8}",
        "strategy=trusted",
    ),
    "central-dp-fedadam": ("strategy=fedadam", "privacy=central_dp"),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_run_killed_inside_a_round_resumes_to_the_same_model(tmp_path, name):
    cfg = composed(*SCENARIOS[name])
    run(cfg, tmp_path / "whole")
    kill_round = cfg.scenario.num_rounds - 1
    with pytest.raises(Killed):
        run(cfg, tmp_path / "resumed", KilledGrid, kill_round=kill_round, after=1)
    assert read_checkpoint(tmp_path / "resumed").round == kill_round - 1
    assert len(records(tmp_path / "resumed")) == kill_round - 1

    run(cfg, tmp_path / "resumed", RenumberedGrid)

    assert_same_model(tmp_path / "whole", tmp_path / "resumed")
    assert_same_records(records(tmp_path / "resumed"), records(tmp_path / "whole"))
    summaries = [
        json.loads((tmp_path / r / "summary.json").read_text()) for r in ("whole", "resumed")
    ]
    assert summaries[1]["status"] == "completed"
    assert strip(summaries[1]["final"]) == strip(summaries[0]["final"])
    assert summaries[1]["privacy"] == summaries[0]["privacy"]


def test_a_device_epsilon_continues_after_resume_instead_of_restarting(tmp_path):
    """A device's DP ledger survives: its epsilon after the resume is the uninterrupted one."""
    cfg = composed("privacy=local_dp", "scenario.fraction_train=1.0", "scenario.num_rounds=3")
    run(cfg, tmp_path / "whole")
    with pytest.raises(Killed):
        run(cfg, tmp_path / "resumed", KilledGrid, kill_round=3, after=2)
    run(cfg, tmp_path / "resumed", RenumberedGrid)

    def epsilons(out: Path) -> dict[str, float]:
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        return {d: e["epsilon"] for d, e in last["devices"].items() if "epsilon" in e}

    whole, resumed = epsilons(tmp_path / "whole"), epsilons(tmp_path / "resumed")
    assert len(whole) == 6
    assert resumed == whole
    first = json.loads((tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()[0])
    assert all(resumed[d] > first["devices"][d]["epsilon"] for d in resumed)


def test_the_error_feedback_residual_is_in_the_state_each_device_keeps(tmp_path):
    cfg = composed("compression=topk", "scenario.fraction_train=1.0", "scenario.num_rounds=2")
    run(cfg, tmp_path)
    store = DeviceStateStore(device_state_dir(tmp_path))
    for device in range(6):
        state = store.load(device, 3)
        assert state is not None and RESIDUAL in state, device


def test_a_fresh_run_in_the_same_directory_starts_from_nothing(tmp_path):
    cfg = composed("privacy=local_dp", "scenario.num_rounds=2")
    run(cfg, tmp_path / "a")
    run(cfg, tmp_path / "b")
    with pytest.raises(Killed):
        run(cfg, tmp_path / "b", KilledGrid, kill_round=2, after=2)  # again, fresh, killed
    assert read_checkpoint(tmp_path / "b").round == 1
    run(cfg, tmp_path / "b", RenumberedGrid)
    assert_same_model(tmp_path / "a", tmp_path / "b")
    assert_same_records(records(tmp_path / "b"), records(tmp_path / "a"))


def test_a_resumed_run_continues_its_wandb_run(tmp_path):
    """Offline, W&B writes one file per attempt; both carry the run's id, so ``wandb sync``
    uploads them into one run, and together they hold every round."""
    cfg = composed("tracking.sinks=[jsonl,wandb]", "scenario.num_rounds=3")
    with pytest.raises(Killed):
        run(cfg, tmp_path, KilledGrid, kill_round=3, after=1)
    run(cfg, tmp_path, RenumberedGrid)

    # W&B's service writes each attempt's file in the background (the killed attempt's is never
    # finished): wait until both carry their run record. W&B names each attempt's directory by
    # the second it started in, so they are ordered by their rounds, not by name.
    deadline = time.monotonic() + 30
    while (
        len(runs := offline_runs(tmp_path)) < 2 or not all(r["run_id"] for r in runs)
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    first, second = sorted(runs, key=lambda r: min(r["history"], default=0))
    assert first["run_id"] == second["run_id"] == (tmp_path / "wandb-run-id").read_text().strip()
    assert sorted(first["history"]) == [1, 2]
    assert sorted(second["history"]) == [3]
    assert second["summary"]["status"] == "completed"


def test_resume_without_a_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        read_checkpoint(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no checkpoint there"):
        read_checkpoint(tmp_path)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "server.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_checkpoint(tmp_path)


def state(value: int) -> RecordDict:
    return RecordDict({"ledger": ConfigRecord({"spent": value})})


def test_device_state_is_read_from_the_newest_round_before_the_one_asked(tmp_path):
    store = DeviceStateStore(tmp_path)
    assert store.load(3, 1) is None
    store.save(3, 2, state(2))
    store.save(3, 5, state(5))
    loaded = store.load(3, 6)
    assert loaded is not None and loaded["ledger"]["spent"] == 5
    # Round 5 again (its server checkpoint was lost): the state before it, and 5's is dropped.
    loaded = store.load(3, 5)
    assert loaded is not None and loaded["ledger"]["spent"] == 2
    assert sorted(p.name for p in (tmp_path / "device-3").iterdir()) == ["round-2.state"]


def test_device_state_keeps_the_newest_two_snapshots(tmp_path):
    store = DeviceStateStore(tmp_path)
    for server_round in (1, 2, 4, 7):
        store.save(0, server_round, state(server_round))
    assert sorted(p.name for p in (tmp_path / "device-0").iterdir()) == [
        "round-4.state",
        "round-7.state",
    ]
