"""Check the robustness grid against its goals and state the sizes it ran at, as markdown.

    .venv/bin/python benchmarks/robustness_goals.py multirun/robustness >> docs/robustness.md

Goals (issue 3), on the final central accuracy, mean over seeds:

- no attack: ours (``trusted``) within 1 point of FedAvg (better counts as within);
- 20 % attackers, every attack: ours within 3 points of its own no-attack result, and at least as
  good as the best of Flower's strategies on that attack;
- 40 %: reported, no goal.

The sizes (devices, rounds, devices per round, local training, wall time per run) are read from
the runs' own ``summary.json``, so they cannot drift from what ran.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

from fl_iot.report import KEYS, Summary, aggregate, load_summaries

OURS = "trusted"
BASELINE = "fedavg"
CLEAN_TOLERANCE = 0.01
ATTACK_TOLERANCE = 0.03


def mean(values: Sequence[float]) -> float | None:
    return statistics.mean(values) if values else None


def sizes(summaries: Sequence[Summary]) -> list[str]:
    """One line per scenario: the sizes its runs were composed with, and their wall time."""
    lines = []
    for scenario in sorted({KEYS["scenario"](s) for s in summaries}):
        runs = [
            s
            for s in summaries
            if KEYS["scenario"](s) == scenario and s.get("status") == "completed"
        ]
        config = runs[0]["config"]
        sc = config["scenario"]
        per_round = round(sc["num_devices"] * sc["fraction_train"])
        classes = ", ".join(
            f"{name} {share:g} ({config['device_classes'][name]['local_epochs']} epochs"
            + (
                f", at most {steps} steps"
                if (steps := config["device_classes"][name].get("max_steps"))
                else ""
            )
            + ")"
            for name, share in sc["device_mix"].items()
            if share > 0
        )
        wall = [s["timings"]["server_total_s"] for s in runs]
        lines.append(
            f"- **{scenario}**: {sc['num_devices']} devices, {sc['num_rounds']} rounds, "
            f"{per_round} devices train per round (fraction {sc['fraction_train']:g}), "
            f"central evaluation every round; {classes}. {len(runs)} runs, "
            f"{statistics.median(wall):.0f} s median per run inside the ServerApp "
            f"(Ray start-up and teardown come on top)."
        )
    return lines


def goals(summaries: Sequence[Summary]) -> list[str]:
    """The goal table: ours at 20 % against its no-attack result and the best Flower strategy."""
    table = aggregate(summaries, ["scenario", "attack", "strategy"], ["fraction"], "accuracy")
    lines = [
        "| scenario | check | ours | against | Δ (points) | goal met |",
        "|---|---|---|---|---|---|",
    ]
    met = total = 0
    for scenario in sorted({row[0] for row in table}):
        clean_ours = mean(table.get((scenario, "none", OURS), {}).get(("0%",), []))
        clean_base = mean(table.get((scenario, "none", BASELINE), {}).get(("0%",), []))
        if clean_ours is not None and clean_base is not None:
            ok = clean_ours >= clean_base - CLEAN_TOLERANCE
            met, total = met + ok, total + 1
            lines.append(
                f"| {scenario} | no attack: within 1 point of FedAvg | {clean_ours:.3f} | "
                f"FedAvg {clean_base:.3f} | {100 * (clean_ours - clean_base):+.1f} | "
                f"{'yes' if ok else '**no**'} |"
            )
        attacks = sorted({row[1] for row in table if row[0] == scenario and row[1] != "none"})
        for attack in attacks:
            cells = {
                row[2]: mean(columns.get(("20%",), []))
                for row, columns in table.items()
                if row[0] == scenario and row[1] == attack
            }
            ours = cells.pop(OURS, None)
            flower = {name: value for name, value in cells.items() if value is not None}
            if ours is None or clean_ours is None or not flower:
                continue
            best_name, best = max(flower.items(), key=lambda item: item[1])
            near_clean = ours >= clean_ours - ATTACK_TOLERANCE
            beats_best = ours >= best
            met, total = met + near_clean, total + 1
            lines.append(
                f"| {scenario} | {attack} 20 %: within 3 points of our no-attack result | "
                f"{ours:.3f} | ours, no attack {clean_ours:.3f} | "
                f"{100 * (ours - clean_ours):+.1f} | {'yes' if near_clean else '**no**'} |"
            )
            met, total = met + beats_best, total + 1
            lines.append(
                f"| {scenario} | {attack} 20 %: at least the best Flower strategy | "
                f"{ours:.3f} | {best_name} {best:.3f} | {100 * (ours - best):+.1f} | "
                f"{'yes' if beats_best else '**no**'} |"
            )
    lines.append("")
    lines.append(f"{met} of {total} checks met.")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directories", nargs="+", type=Path)
    args = parser.parse_args(argv)
    summaries = load_summaries(args.directories)
    print("\n## Sizes\n")
    print("\n".join(sizes(summaries)))
    print(
        "\nEvery cell is the final central accuracy (global model on the scenario's held-out "
        "split) after the last round, mean ± sample std over seeds (number of seeds). Partitions "
        "are natural (patient, vehicle), so non-IID. Attackers are chosen by the seed from the "
        "whole fleet; Krum's, MultiKrum's and Bulyan's f is the expected number of attackers "
        "among the sampled devices."
    )
    print("\n## Goals (final central accuracy, mean over seeds)\n")
    print("\n".join(goals(summaries)))


if __name__ == "__main__":
    main()
