"""``benchmarks/false_rejections.py``: what it counts, and the clean smart_home run of the issue."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(autouse=True)
def _benchmarks_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def test_counts_honest_scored_device_rounds_and_keeps_malformed_apart() -> None:
    from false_rejections import count_rejections

    # Prepare: two rounds; device 3 is the attacker and never counts
    records = [
        {
            "devices": {"3": {"attacker": True}},
            "strategy": {
                "devices": {
                    "0": {"status": "accepted"},
                    "1": {"status": "anomalous"},
                    "2": {"status": "malformed"},
                    "3": {"status": "anomalous"},
                },
                "rejected": {"1": "update norm too large (12.5× the round median > 10)"},
            },
        },
        {"devices": {}, "strategy": {"devices": {"0": {"status": "accepted"}}}},
        {"devices": {}, "strategy": None},  # a round whose aggregation failed
    ]
    # Execute
    counts = count_rejections(records)
    # Assert
    assert counts == {
        "scored": 3,
        "rejected": 1,
        "malformed": 1,
        "reasons": {"update norm too large (…× the round median > …)": 1},
    }


def test_clean_smart_home_run_rejects_no_honest_device(
    shared_data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from false_rejections import run

    monkeypatch.setenv("FL_IOT_DATA_ROOT", str(shared_data_root))
    logging.disable(logging.WARNING)
    try:
        # Execute: the run of the issue (6 hubs, seed 0, no attack), its first 3 rounds
        result = run("smart_home", "trusted", 0, [], rounds=3)
    finally:
        logging.disable(logging.NOTSET)
    # Assert: round 2 used to refuse 2 of the 6 honest hubs for direction
    assert result["scored"] == 18
    assert result["rejected"] == 0, result["reasons"]
