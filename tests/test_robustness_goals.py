"""The goal checks of the robustness benchmark, on a hand-built grid and on probe records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(autouse=True)
def _benchmarks_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def _checks(lines: list[str]) -> dict[str, list[str]]:
    """check text -> the row's cells, for the table rows of ``goal_checks``."""
    rows = [line.strip("|").split("|") for line in lines if line.startswith("| s |")]
    return {cells[1].strip(): [c.strip() for c in cells] for cells in rows}


TABLE = {
    ("s", "none", "trusted", "0%"): {0: 0.740, 1: 0.700},
    ("s", "none", "fedavg", "0%"): {0: 0.756, 1: 0.700},
    ("s", "alie", "trusted", "20%"): {0: 0.700, 1: 0.690},
    ("s", "alie", "fedmedian", "20%"): {0: 0.710, 1: 0.720},
    ("s", "alie", "fedavg", "20%"): {0: 0.600, 1: 0.800, 2: 0.900},  # seed 2: ours did not run
}


def test_goal_checks_compare_means_over_shared_seeds_with_the_stated_tolerances() -> None:
    from robustness_goals import goal_checks

    # Execute
    lines = goal_checks(TABLE)
    checks = _checks(lines)
    # Assert: no attack 0.720 against FedAvg 0.728, -0.8 points: met within the 1-point
    # tolerance, on seed 1 alone (seed 0: -1.6 points). Per-seed differences -1.6 and 0: mean
    # -0.8, sd 1.131, t(0.975, 1 df) = 12.706, half-width 12.706 * 1.131 / sqrt(2) = 10.17.
    clean = checks["no attack: within 1 point of FedAvg"]
    assert clean[2:] == ["0.720", "FedAvg 0.728", "-0.8", "-11.0 … +9.4", "1 of 2", "yes"]
    # ALIE: 0.695 against our 0.720 without attack, -2.5 points: met on the mean, and on seed 1
    # alone (seed 0: -4 points, seed 1: -1; sd 2.121, half-width 19.06).
    within = checks["alie 20 %: within 3 points of our no-attack result"]
    assert within[2:] == [
        "0.695",
        "ours, no attack 0.720",
        "-2.5",
        "-21.6 … +16.6",
        "1 of 2",
        "yes",
    ]
    # Best Flower strategy over the shared seeds 0 and 1: FedAvg 0.700, FedMedian 0.715. A miss
    # of 2 points on both seeds, but two seeds cannot tell it from 0 (half-width 12.71).
    best = checks["alie 20 %: at least the best Flower strategy"]
    assert best[2:] == [
        "0.695",
        "fedmedian 0.715",
        "-2.0",
        "-14.7 … +10.7",
        "0 of 2",
        "**no**, within the seeds' spread",
    ]
    assert lines[-1] == (
        "2 of 3 checks met. Misses within the seeds' spread (the 95 % interval of the "
        "per-seed difference reaches the goal): 1 of 1."
    )


def test_a_miss_on_every_seed_is_beyond_what_the_seeds_decide() -> None:
    from robustness_goals import goal_checks

    table = {
        ("s", "none", "trusted", "0%"): {0: 0.70, 1: 0.71, 2: 0.72},
        ("s", "none", "fedavg", "0%"): {0: 0.75, 1: 0.76, 2: 0.78},
    }
    # Execute
    lines = goal_checks(table)
    # Assert: differences -5, -5, -6 points: mean -5.33, sd 0.577, t(0.975, 2 df) = 4.303,
    # half-width 4.303 * 0.577 / sqrt(3) = 1.43; the interval ends below the -1 tolerance.
    row = _checks(lines)["no attack: within 1 point of FedAvg"]
    assert row[4:] == ["-5.3", "-6.8 … -3.9", "0 of 3", "**no**"]
    assert lines[-1].endswith("reaches the goal): 0 of 1.")


def _record(
    strategy: str, attack: str, seed: int, accuracy: list[float], extra: list[str] | None = None
) -> dict[str, Any]:
    return {
        "scenario": "s",
        "strategy": strategy,
        "attack": attack,
        "fraction": 0.0 if attack == "none" else 0.2,
        "seed": seed,
        "extra": extra or [],
        "accuracy": accuracy,
        "final": accuracy[-1],
    }


def test_the_probe_checks_its_runs_of_the_shipped_settings_only() -> None:
    from robustness_probe import goal_table

    records = [
        _record("trusted", "none", 0, [0.5, 0.70, 0.72, 0.74]),
        _record("fedavg", "none", 0, [0.5, 0.80, 0.80, 0.74]),
        # Neither a variant of ours nor the absent control is "ours".
        _record("trusted", "none", 0, [0.1, 0.1, 0.1, 0.1], extra=["strategy.x=1"]),
        _record("trusted", "absent", 0, [0.1, 0.1, 0.1, 0.1]),
    ]
    # Execute
    final = _checks(goal_table(records).splitlines())
    last3 = _checks(goal_table(records, last_rounds=3).splitlines())
    # Assert: final 0.74 against 0.74; last 3 rounds 0.72 against 0.78
    assert final["no attack: within 1 point of FedAvg"][2:4] == ["0.740", "FedAvg 0.740"]
    assert last3["no attack: within 1 point of FedAvg"][2:] == [
        "0.720",
        "FedAvg 0.780",
        "-6.0",
        "–",  # one seed: no interval
        "0 of 1",
        "**no**",
    ]
    assert len(final) == len(last3) == 1


FRACTIONS = {
    ("s", "none", "trusted", "0%"): {0: 0.740, 1: 0.700},
    ("s", "alie", "trusted", "10%"): {0: 0.730, 1: 0.700},
    ("s", "alie", "fedavg", "10%"): {0: 0.700, 1: 0.690},
    ("s", "alie", "fedmedian", "10%"): {0: 0.720, 1: 0.690},
    ("s", "ipm", "trusted", "10%"): {0: 0.530, 1: 0.700},
    ("s", "ipm", "fedavg", "10%"): {0: 0.600, 1: 0.690},
    ("s", "alie", "trusted", "30%"): {0: 0.650, 1: 0.630},
    ("s", "alie", "fedavg", "30%"): {0: 0.700, 1: 0.660},
    ("s", "alie", "fedmedian", "30%"): {0: 0.600},  # one seed: compared on seed 0 alone
}


def test_fraction_tables_summarise_each_fraction_and_list_every_cell() -> None:
    from robustness_goals import fraction_tables

    # Execute
    lines = fraction_tables(FRACTIONS)
    # Assert: at 10 %, ALIE 0.715 against FedMedian 0.705 (met, and within 3 points of our 0.720
    # without attack); IPM 0.615 against FedAvg 0.645 (neither). Means 0.665 against 0.675.
    assert "| s | 10% | 2 | 1 | 1 | 0.665 | 0.675 | -1.0 |" in lines
    # At 30 % the best Flower strategy is FedAvg, 0.680 over the shared seeds; FedMedian's 0.600
    # is on seed 0 only, where ours has 0.650.
    assert "| s | 30% | 1 | 0 | 0 | 0.640 | 0.680 | -4.0 |" in lines
    assert (
        "| s | alie | 10% | 0.715 ± 0.021 (2) | 0.695 ± 0.007 (2) | 0.705 ± 0.021 (2) "
        "| +1.0 (fedmedian) |"
    ) in lines
    assert "| s | ipm | 10% | 0.615 ± 0.120 (2) | 0.645 ± 0.064 (2) | – | -3.0 (fedavg) |" in lines
    # One attack's fractions are listed together.
    rows = [line for line in lines if line.startswith("| s | alie |") or "| ipm |" in line]
    assert [r.split(" | ")[1:3] for r in rows] == [["alie", "10%"], ["alie", "30%"], ["ipm", "10%"]]


def test_probe_runs_add_only_the_fractions_the_grid_did_not_run() -> None:
    from robustness_goals import probe_cells, with_other_fractions

    grid = {("s", "none", "trusted", "0%"): {0: 0.74}, ("s", "alie", "trusted", "20%"): {0: 0.7}}
    records = [
        {**_record("trusted", "alie", 0, [0.5, 0.1]), "fraction": 0.2},  # the grid has 20 %
        {**_record("trusted", "alie", 0, [0.5, 0.6]), "fraction": 0.3},
        {**_record("trusted", "none", 1, [0.5, 0.9])},  # the grid has the no-attack column
        {**_record("trusted", "alie", 1, [0.5, 0.2], extra=["x=1"]), "fraction": 0.3},
    ]
    # Execute
    merged = with_other_fractions(grid, probe_cells(records))
    # Assert
    assert merged == {**grid, ("s", "alie", "trusted", "30%"): {0: 0.6}}


def test_probe_runs_add_seeds_at_the_grid_fractions_and_never_replace_the_grid_runs() -> None:
    from robustness_goals import probe_cells, with_more_seeds

    grid = {("s", "none", "trusted", "0%"): {0: 0.74}, ("s", "alie", "trusted", "20%"): {0: 0.7}}
    records = [
        {**_record("trusted", "alie", 0, [0.5, 0.1]), "fraction": 0.2},  # the grid ran seed 0
        {**_record("trusted", "alie", 1, [0.5, 0.6]), "fraction": 0.2},
        {**_record("fedavg", "alie", 1, [0.5, 0.65]), "fraction": 0.2},  # a cell new to the grid
        {**_record("trusted", "none", 1, [0.5, 0.9])},
        {**_record("trusted", "alie", 1, [0.5, 0.3]), "fraction": 0.3},  # not a grid fraction
    ]
    # Execute
    merged = with_more_seeds(grid, probe_cells(records))
    # Assert
    assert merged == {
        ("s", "none", "trusted", "0%"): {0: 0.74, 1: 0.9},
        ("s", "alie", "trusted", "20%"): {0: 0.7, 1: 0.6},
        ("s", "alie", "fedavg", "20%"): {1: 0.65},
    }
    assert grid[("s", "alie", "trusted", "20%")] == {0: 0.7}  # the grid's table is left as it was


def test_paired_interval_is_the_student_t_interval_of_the_mean_difference() -> None:
    from robustness_goals import paired_interval

    # mean 0.02, standard deviation 0.01, 3 seeds: t(0.975, 2) = 4.302653 × 0.01 / √3
    low, high = paired_interval([0.01, 0.03, 0.02])  # type: ignore[misc]
    assert (low, high) == pytest.approx((0.02 - 0.0248414, 0.02 + 0.0248414), abs=1e-7)
    assert paired_interval([0.01]) is None
