"""``benchmarks/robustness_probe.py``: kept metrics file names, and no run lost after it ran."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(autouse=True)
def _benchmarks_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def _name(extra: list[str], scenario: str = "healthcare_wearables") -> str:
    from robustness_probe import metrics_file_name

    return metrics_file_name(scenario, "trusted", "alie", 0.2, 0, extra)


def test_a_run_without_overrides_keeps_its_plain_name() -> None:
    assert _name([]) == "healthcare_wearables_trusted_alie_0.2_seed0.jsonl"


@pytest.mark.parametrize(
    "extra",
    [
        ["scenario.dataset.root=/work/shared/data"],
        ["hydra.run.dir=../x", "strategy.direction_threshold=5"],
        ["tracking.tags=[a b, 'c']", "x=" + "y" * 400],
        ["a\\b", "..", "/"],
    ],
)
def test_any_override_gives_one_plain_file_name(tmp_path: Path, extra: list[str]) -> None:
    name = _name(extra)

    assert os.sep not in name and "\\" not in name and not name.startswith(".")
    assert len(name) < 200
    (tmp_path / name).write_text("{}\n")  # no folder to create: a file in the kept directory
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_runs_whose_overrides_differ_never_share_a_file() -> None:
    variants = [["a=/b"], ["a=-b"], ["a=", "b"], ["a= b"], ["x=" + "1" * 100], ["x=" + "1" * 101]]

    names = [_name(extra) for extra in variants]

    assert len(set(names)) == len(names)
    assert _name(["a=/b"]) == _name(["a=/b"])
    assert _name(["strategy.direction_threshold=5"]).startswith(
        "healthcare_wearables_trusted_alie_0.2_seed0_strategy.direction_threshold=5_"
    )


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the federated run by one that writes a two-round ``metrics.jsonl`` at once."""

    def run_server(grid: object, cfg: object, out: Path) -> None:
        records = [{"central": {"accuracy": a}, "devices": {}} for a in (0.5, 0.6)]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    monkeypatch.setattr("fl_iot.server.run_server", run_server)
    monkeypatch.setattr("fl_iot.client_app.build_client_app", lambda config: None)
    monkeypatch.setattr("tests.in_process_grid.InProcessGrid", lambda *args, **kwargs: None)


def test_keep_metrics_with_a_path_override_keeps_both_the_result_and_the_metrics(
    fake_run: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import robustness_probe

    out, kept = tmp_path / "probe.jsonl", tmp_path / "kept"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "robustness_probe.py",
            "--strategies", "fedavg",
            "--attacks", "none",
            "--rounds", "2",
            "--out", str(out),
            "--keep-metrics", str(kept),
            "--",
            "scenario.dataset.root=/no/such/dir",
        ],
    )  # fmt: skip

    robustness_probe.main()

    (result,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert result["final"] == 0.6 and result["extra"] == ["scenario.dataset.root=/no/such/dir"]
    (metrics,) = kept.iterdir()
    assert metrics.name.startswith("healthcare_wearables_fedavg_none_0.2_seed0_scenario.dataset")
    assert len(metrics.read_text().splitlines()) == 2


def test_the_result_is_saved_before_the_metrics_are_copied(
    fake_run: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import robustness_probe

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(robustness_probe.shutil, "copy", full_disk)
    saved: list[dict[str, object]] = []

    with pytest.raises(OSError, match="No space left"):
        robustness_probe.run_one(
            "healthcare_wearables", "fedavg", "none", 0.0, 0, 2, [], tmp_path, save=saved.append
        )

    assert [r["final"] for r in saved] == [0.6]


def test_kept_summaries_are_read_by_the_report_as_the_grid_runs_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One real in-process round per strategy, on the bundled data.
    import robustness_probe

    from fl_iot.report import KEYS, load_summaries

    kept = tmp_path / "grid"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "robustness_probe.py",
            "--strategies", "fedavg", "trusted",
            "--attacks", "none", "sign_flip",
            "--rounds", "1",
            "--out", str(tmp_path / "probe.jsonl"),
            "--keep-summaries", str(kept),
        ],
    )  # fmt: skip

    robustness_probe.main()

    summaries = load_summaries([kept])
    cells = sorted(
        (KEYS["scenario"](s), KEYS["strategy"](s), KEYS["attack"](s), KEYS["fraction"](s))
        for s in summaries
    )
    assert cells == [
        ("healthcare_wearables", "fedavg", "none", "0%"),
        ("healthcare_wearables", "fedavg", "sign_flip", "20%"),
        ("healthcare_wearables", "trusted", "none", "0%"),
        ("healthcare_wearables", "trusted", "sign_flip", "20%"),
    ]
    columns = {Path(s["_path"]).relative_to(kept).parts[:2] for s in summaries}
    assert columns == {("healthcare_wearables", "clean"), ("healthcare_wearables", "attacks")}
    assert all(s["status"] == "completed" for s in summaries)
    from robustness_goals import sizes

    (line,) = sizes(summaries, how="in process")
    assert line.startswith("- **healthcare_wearables**: 47 devices, 1 rounds")
    assert "4 runs" in line and line.endswith("(in process).")
