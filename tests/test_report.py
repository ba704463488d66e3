import json

import pytest

from fl_iot.report import load_summaries, main, markdown_table, mean_std


def write_run(
    root,
    name,
    strategy,
    attack,
    fraction,
    seed,
    accuracy,
    status="completed",
    errors=(),
    detection=None,
):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    summary = {
        "status": status,
        "seed": seed,
        "errors": list(errors),
        "final": {"central": {"accuracy": accuracy, "macro_f1": accuracy / 2}, "federated": {}},
        "timings": {},
        "detection": detection or {},
        "config": {
            "choices": {"scenario": "smart_home", "strategy": strategy, "attack": attack},
            "attack": {"name": attack, "fraction": fraction},
            "scenario": {"name": "smart_home", "device_mix": {"home_hub": 1.0}},
            "device_classes": {"home_hub": {"trainer": "standard", "privacy": {}}},
            "privacy": {"local_dp": False, "target_epsilon": None},
        },
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_mean_std_shows_mean_sample_std_and_count():
    assert mean_std([0.5, 0.7]) == "0.600 ± 0.141 (2)"
    assert mean_std([0.5]) == "0.500 ± 0.000 (1)"
    assert mean_std([]) == "–"


def test_table_aggregates_seeds_per_row_and_column(tmp_path):
    write_run(tmp_path, "a0", "fedavg", "alie", 0.2, 0, 0.5)
    write_run(tmp_path, "a1", "fedavg", "alie", 0.2, 1, 0.7)
    write_run(tmp_path, "b0", "trusted", "alie", 0.2, 0, 0.9)
    write_run(tmp_path, "b1", "trusted", "alie", 0.4, 0, 0.8)
    write_run(tmp_path, "x", "trusted", "alie", 0.4, 1, 0.1, status="failed")

    table = markdown_table(
        load_summaries([tmp_path]), ["attack", "strategy"], ["fraction"], "accuracy"
    )

    assert table.splitlines() == [
        "| attack | strategy | 20% | 40% |",
        "|---|---|---|---|",
        "| alie | fedavg | 0.600 ± 0.141 (2) | – |",
        "| alie | trusted | 0.900 ± 0.000 (1) | 0.800 ± 0.000 (1) |",
    ]


def test_rejection_scores_are_blank_where_no_attacker_replied(tmp_path):
    clean = {"precision": 1.0, "recall": 1.0, "rejected": 0.0, "attackers": 0.0}
    attacked = {"precision": 0.5, "recall": 0.25, "rejected": 8.0, "attackers": 16.0}
    write_run(tmp_path, "c0", "trusted", "none", 0.0, 0, 0.7, detection=clean)
    write_run(tmp_path, "a0", "trusted", "alie", 0.2, 0, 0.7, detection=attacked)
    summaries = load_summaries([tmp_path])

    for metric, attacked_cell in (("recall", "0.250"), ("precision", "0.500")):
        table = markdown_table(summaries, ["attack"], ["fraction"], metric)
        assert table.splitlines() == [
            "| attack | 20% |",
            "|---|---|",
            f"| alie | {attacked_cell} ± 0.000 (1) |",  # the clean run has no cell
        ], metric


def test_command_writes_markdown_and_plot_and_lists_failures(tmp_path, capsys):
    write_run(tmp_path / "runs", "a0", "fedavg", "sign_flip", 0.2, 0, 0.5, errors=["round 1: x"])
    write_run(tmp_path / "runs", "b0", "bulyan", "sign_flip", 0.2, 0, 0.4, status="failed")

    main(
        [
            str(tmp_path / "runs"),
            "--output",
            str(tmp_path / "t.md"),
            "--plot",
            str(tmp_path / "p.png"),
        ]
    )

    text = (tmp_path / "t.md").read_text()
    assert "1 completed runs (1 failed)" in text
    assert "- failed:" in text and "recorded round errors" in text
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert "sign_flip" in capsys.readouterr().out


def test_command_refuses_an_empty_directory(tmp_path):
    with pytest.raises(SystemExit, match=r"no summary\.json"):
        main([str(tmp_path)])
