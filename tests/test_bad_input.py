"""Bad input to the ``fl-iot`` command, and runs that go through without a usable model.

Bad input exits with 2 and one message on stderr, no traceback, before Ray starts; a run whose
model never moved or diverged exits with 3, keeps its outputs and says where they are.
(``tests/test_config_schema.py`` sweeps every field of the schema in process.)
"""

from __future__ import annotations

import copy
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from fl_iot.cli import check_output_dir, judge_run
from fl_iot.errors import ConfigError
from fl_iot.records import ClientCounts, FinalMetrics, RunStatus, RunSummary
from fl_iot.run_config import compose_config
from tests.e2e import run_cli


@pytest.fixture(autouse=True)
def _fresh_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def compose(*overrides: str) -> DictConfig:
    """A composed config of our own: compose_config returns one cached object per overrides."""
    GlobalHydra.instance().clear()
    return copy.deepcopy(compose_config(tuple(overrides)))


def test_a_strategy_constructor_refusal_becomes_a_config_error():
    from fl_iot.cli import check_strategy

    for overrides, message in [
        (
            ("+strategy.no_such_option=1",),
            "strategy 'flwr.serverapp.strategy.FedAvg' refused its options: TypeError: "
            ".*unexpected keyword argument 'no_such_option'",
        ),
        (
            ("strategy=fedtrimmedavg", "strategy.beta=0.7"),
            "strategy 'flwr.serverapp.strategy.FedTrimmedAvg' refused its options: "
            "ValueError: `beta`",
        ),
        (
            ("strategy=trusted", "strategy.thresholds.small_round_backward_pull=-1"),
            r"strategy\.thresholds \(strategies\.AnomalyThresholds\) refused its options: "
            "ValueError: small_round_backward_pull must be > 0 or None, got -1",
        ),
    ]:
        cfg = OmegaConf.create(OmegaConf.to_container(compose(*overrides), resolve=True))
        with pytest.raises(ConfigError, match=f"^{message}"):
            check_strategy(cfg)


def test_an_unwritable_output_directory_is_refused(tmp_path):
    check_output_dir(tmp_path / "new" / "run", "hydra.run.dir")  # created
    with pytest.raises(ConfigError, match=r"hydra.run.dir=/proc/x cannot hold the run's outputs"):
        check_output_dir("/proc/x", "hydra.run.dir")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"hydra.sweep.dir=.*file/run cannot hold"):
        check_output_dir(blocker / "run", "hydra.sweep.dir")


# ---- the real command -----------------------------------------------------------------------

CLI_BAD_INPUT = [
    (["scenario.min_train_devices=1000"], ["scenario.min_train_devices", "1000", "num_devices"]),
    (["scenario.optimizer.learning_rate=-0.1"], ["learning_rate", "> 0", "-0.1"]),
    (["scenario.optimizer.learning_rate=nan"], ["learning_rate", "nan"]),
    (["seed=-1"], ["seed", "-1"]),
    (["privacy=central_dp", "privacy.central.clipping_norm=0"], ["clipping_norm", "> 0"]),
    (["engine.round_timeout_s=-5"], ["engine.round_timeout_s", "-5"]),
    (["hydra.run.dir=/proc/x"], ["hydra.run.dir=/proc/x", "writable"]),
    (["strategy=krum", "strategy.num_malicious_nodes=-1"], ["num_malicious_nodes", ">= 0"]),
    (["+scenario.foo=1"], ["unknown key scenario.foo", "num_rounds"]),
    (["seed=abc"], ["seed=abc", "Integer"]),
]
"""Bad invocations that used to hang, trace back or pass silently, and what their message says."""


@pytest.mark.e2e
def test_the_command_refuses_bad_input_with_exit_2_and_one_message(tmp_path):
    def attempt(args: list[str]):
        run_dir = (
            []
            if any(a.startswith("hydra.run.dir") for a in args)
            else [f"hydra.run.dir={tmp_path}/{abs(hash(tuple(args)))}"]
        )
        return run_cli(*args, *run_dir, timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(attempt, [args for args, _ in CLI_BAD_INPUT]))

    for (args, expected), result in zip(CLI_BAD_INPUT, results, strict=True):
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr + result.stdout, args
        assert "Warning" not in result.stderr, (args, result.stderr)
        for text in expected:
            assert text in result.stderr, (args, text, result.stderr)


@pytest.mark.e2e
def test_a_sweep_runs_every_job_and_exits_with_the_first_failure(tmp_path):
    result = run_cli(
        "-m",
        "scenario.min_train_devices=1000,2000",
        f"hydra.sweep.dir={tmp_path}",
        timeout=300,
    )

    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "job 0 (scenario.min_train_devices=1000) failed" in result.stderr
    assert "job 1 (scenario.min_train_devices=2000) failed" in result.stderr
    assert "2 job(s) of the sweep failed: 0, 1" in result.stderr


# ---- judging a finished run ----------------------------------------------------------------


def arrays(**values: list[float]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in values.items()})


SUMMARY = RunSummary(
    status=RunStatus.COMPLETED,
    error="",
    scenario="healthcare_wearables",
    strategy="flwr.serverapp.strategy.FedAvg",
    seed=0,
    rounds_completed=1,
    final=FinalMetrics(),
    best_central={},
    initial_central={},
    detection={},
    privacy={},
    clients=ClientCounts(sampled=8, replied=0, failed=8, declined=0, missing=0),
    timings={},
    errors=["round 1: aggregate_train: FedAvg returned no model (0 replies)"],
    dataset={},
    federation={},
    model_parameters=2,
    versions={},
    config={},
)


def test_a_run_whose_model_never_moved_failed():
    reason = judge_run(SUMMARY, arrays(w=[1.0, 2.0]), arrays(w=[1.0, 2.0]))

    assert reason is not None
    assert "no round aggregated an update" in reason
    assert "0 of 8 sampled devices replied (8 failed" in reason
    assert "FedAvg returned no model" in reason


def test_a_run_whose_model_diverged_failed():
    reason = judge_run(SUMMARY, arrays(w=[1.0, 2.0]), arrays(w=[1.0, math.nan]))

    assert reason is not None and "diverged" in reason


def test_a_run_whose_model_moved_and_is_finite_did_not_fail():
    assert judge_run(SUMMARY, arrays(w=[1.0, 2.0]), arrays(w=[1.0, 2.5])) is None


def test_a_roll_call_that_nobody_answers_is_a_failed_run(monkeypatch, tmp_path):
    from fl_iot import cli, simulation
    from fl_iot.errors import RunFailed
    from fl_iot.roster import RosterError

    def no_nodes(cfg, output_dir, resume=False):
        raise RosterError("only 0 of 4 nodes connected within 1 s")

    monkeypatch.setattr(simulation, "run_in_simulation", no_nodes)
    cfg = compose("scenario.num_devices=4", "engine.roll_call_timeout_s=1")

    with pytest.raises(RunFailed, match=r"only 0 of 4 nodes .* \(engine.roll_call_timeout_s=1\)"):
        cli.run_study(cfg, tmp_path)


@pytest.mark.e2e
def test_the_command_exits_3_and_keeps_the_outputs_when_the_model_diverges(
    shared_data_root, tmp_path
):
    run_dir = tmp_path / "run"
    result = run_cli(
        "scenario=smart_home",
        "scenario.num_rounds=2",
        "scenario.optimizer.learning_rate=1e30",
        "tracking.sinks=[console,summary,jsonl]",
        f"hydra.run.dir={run_dir}",
        env={"FL_IOT_DATA_ROOT": str(shared_data_root)},
        timeout=600,
    )

    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "fl-iot: run failed: the final global model has non-finite weights: training diverged; "
        f"outputs in {run_dir}"
    )
    assert {"summary.json", "metrics.jsonl"} <= {p.name for p in Path(run_dir).iterdir()}
