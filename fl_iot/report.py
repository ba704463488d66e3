"""Turn a multirun directory into a markdown table (mean ± std over seeds) and a plot.

    fl-iot-report multirun/2026-11-29/14-00-00                 # robustness grid (default rows)
    fl-iot-report multirun/... --rows scenario privacy epsilon --columns none
    fl-iot-report multirun/... --output docs/robustness.md --plot docs/robustness.png

Every job directory below the given directories that holds a ``summary.json`` is one run; runs
that differ only in their seed are aggregated. Row and column keys are read from each summary:

``scenario``, ``strategy``, ``attack``, ``privacy``
    the config-group options the run was composed from (``config.choices``; the class name for
    strategies composed without Hydra);
``fraction``
    the attacker fraction, ``epsilon`` the target epsilon of the first private device class.

The grouping is plain Python rather than a pandas pivot: pandas writes markdown only through
``tabulate``, which is not installed, and the cells keep their own ``mean ± std (n)`` format and
natural order (``1, 3, 8, none``) either way.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

Summary = dict[str, Any]


def _choice(group: str) -> Callable[[Summary], str]:
    def value(summary: Summary) -> str:
        config = summary.get("config", {})
        chosen = config.get("choices", {}).get(group)
        if chosen:
            return str(chosen)
        if group == "strategy":
            return str(config.get("strategy", {}).get("_target_", "?")).rsplit(".", 1)[-1]
        if group == "scenario":
            return str(config.get("scenario", {}).get("name", "?"))
        if group == "attack":
            return str(config.get("attack", {}).get("name", "?"))
        return "?"

    return value


def _fraction(summary: Summary) -> str:
    return f"{summary['config']['attack']['fraction']:.0%}"


def _epsilon(summary: Summary) -> str:
    config = summary["config"]
    policy = config.get("privacy", {})
    private = [
        name
        for name, share in config["scenario"]["device_mix"].items()
        if share > 0
        and (policy.get("local_dp") or config["device_classes"][name]["trainer"] != "standard")
    ]
    if not private:
        return "no DP"
    if policy.get("target_epsilon") is not None:
        return f"{policy['target_epsilon']:g}"
    return ", ".join(
        f"{name} {config['device_classes'][name]['privacy']['target_epsilon']:g}"
        for name in private
    )


KEYS: dict[str, Callable[[Summary], str]] = {
    "scenario": _choice("scenario"),
    "strategy": _choice("strategy"),
    "attack": _choice("attack"),
    "privacy": _choice("privacy"),
    "fraction": _fraction,
    "epsilon": _epsilon,
}
"""Grouping keys by name."""


def _against_attackers(summary: Summary, score: str) -> float | None:
    """A rejection score of the run, or None where no attacker replied in any round.

    Against an empty attacker set recall is vacuous and precision only says whether anything
    was rejected; the summary keeps its 1.0 conventions, the table shows "–".
    """
    detection = summary.get("detection", {})
    return detection.get(score) if detection.get("attackers") else None


METRICS: dict[str, Callable[[Summary], float | None]] = {
    "accuracy": lambda s: s["final"]["central"].get("accuracy"),
    "macro_f1": lambda s: s["final"]["central"].get("macro_f1"),
    "balanced_accuracy": lambda s: s["final"]["central"].get("balanced_accuracy"),
    "federated_macro_f1": lambda s: s["final"]["federated"].get("macro_f1"),
    "recall": lambda s: _against_attackers(s, "recall"),
    "precision": lambda s: _against_attackers(s, "precision"),
    "attacker_weight": lambda s: s.get("detection", {}).get("attacker_weight"),
    "epsilon_spent": lambda s: s.get("privacy", {}).get("epsilon-max"),
    "mean_round_s": lambda s: s["timings"].get("mean_round_s"),
}
"""Reported metrics by name (central metrics are the global model on the held-out split)."""


def load_summaries(directories: Iterable[Path]) -> list[Summary]:
    """Every completed run's summary below ``directories`` (failed runs are reported apart)."""
    summaries = []
    for directory in directories:
        for path in sorted(Path(directory).rglob("summary.json")):
            summary = json.loads(path.read_text())
            summary["_path"] = str(path.parent)
            summaries.append(summary)
    return summaries


def aggregate(
    summaries: Sequence[Summary], rows: Sequence[str], columns: Sequence[str], metric: str
) -> dict[tuple[str, ...], dict[tuple[str, ...], list[float]]]:
    """``table[row key][column key]`` = the metric of every seed of that cell."""
    table: dict[tuple[str, ...], dict[tuple[str, ...], list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for summary in summaries:
        if summary.get("status") != "completed":
            continue
        value = METRICS[metric](summary)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        row = tuple(KEYS[k](summary) for k in rows)
        column = tuple(KEYS[k](summary) for k in columns)
        table[row][column].append(float(value))
    return table


def mean_std(values: Sequence[float]) -> str:
    """``0.912 ± 0.004 (3)``: mean, sample standard deviation and number of seeds."""
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f} ({len(values)})"


def markdown_table(
    summaries: Sequence[Summary], rows: Sequence[str], columns: Sequence[str], metric: str
) -> str:
    """A markdown table of ``metric`` (mean ± std over seeds) with the given row and column keys."""
    table = aggregate(summaries, rows, columns, metric)
    column_keys = sorted({c for cells in table.values() for c in cells}, key=_natural_order)
    header = [*rows, *(" / ".join(c) or metric for c in column_keys)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(table, key=_natural_order):
        cells = [mean_std(table[row].get(c, [])) for c in column_keys]
        lines.append("| " + " | ".join([*row, *cells]) + " |")
    return "\n".join(lines)


def _natural_order(key: tuple[str, ...]) -> tuple[Any, ...]:
    # "0%" < "20%" < "40%", "1" < "3" < "8" < "no DP"
    def part(text: str) -> tuple[int, float, str]:
        try:
            return (0, float(text.rstrip("%")), text)
        except ValueError:
            return (1, 0.0, text)

    return tuple(part(k) for k in key)


def plot(
    summaries: Sequence[Summary], rows: Sequence[str], x: str, panel: str, metric: str, path: Path
) -> None:
    """One panel per value of ``panel``; ``metric`` against ``x``, one line per ``rows`` key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({KEYS[panel](s) for s in summaries}, key=lambda v: _natural_order((v,)))
    width = min(4, len(panels))
    height = math.ceil(len(panels) / width)
    figure, axes = plt.subplots(
        height, width, figsize=(4 * width, 3.2 * height), squeeze=False, sharey=True
    )
    for index, value in enumerate(panels):
        axis = axes[index // width][index % width]
        subset = [s for s in summaries if KEYS[panel](s) == value]
        table = aggregate(subset, rows, [x], metric)
        for row in sorted(table, key=_natural_order):
            xs = sorted(table[row], key=_natural_order)
            means = [statistics.mean(table[row][c]) for c in xs]
            stds = [statistics.stdev(table[row][c]) if len(table[row][c]) > 1 else 0 for c in xs]
            axis.errorbar(
                [c[0] for c in xs], means, yerr=stds, marker="o", capsize=3, label=" / ".join(row)
            )
        axis.set(title=f"{panel} = {value}", xlabel=x, ylabel=metric)
        axis.grid(alpha=0.3)
    for index in range(len(panels), width * height):
        axes[index // width][index % width].axis("off")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point ``fl-iot-report``."""
    parser = argparse.ArgumentParser(description="Summarise fl-iot multirun directories.")
    parser.add_argument("directories", nargs="+", type=Path)
    parser.add_argument(
        "--rows", nargs="+", default=["scenario", "attack", "strategy"], choices=sorted(KEYS)
    )
    parser.add_argument("--columns", nargs="*", default=["fraction"], choices=sorted(KEYS))
    parser.add_argument("--metric", nargs="+", default=["accuracy"], choices=sorted(METRICS))
    parser.add_argument("--output", type=Path, help="write the markdown here too")
    parser.add_argument("--plot", type=Path, help="write a PNG plot here")
    parser.add_argument("--plot-panel", default="attack", choices=sorted(KEYS))
    args = parser.parse_args(argv)

    summaries = load_summaries(args.directories)
    if not summaries:
        raise SystemExit(f"no summary.json below {', '.join(map(str, args.directories))}")
    failed = [s for s in summaries if s.get("status") != "completed"]
    sections = [
        f"{len(summaries) - len(failed)} completed runs ({len(failed)} failed) from "
        f"{', '.join(str(d) for d in args.directories)}. Cells: mean ± std (number of seeds)."
    ]
    for metric in args.metric:
        sections.append(
            f"### {metric}\n\n" + markdown_table(summaries, args.rows, args.columns, metric)
        )
    for summary in failed:
        sections.append(f"- failed: {summary['_path']}: {summary.get('error')}")
    with_errors = [s for s in summaries if s.get("status") == "completed" and s.get("errors")]
    if with_errors:
        sections.append(
            f"{len(with_errors)} completed run(s) recorded round errors (a strategy refused to "
            "aggregate, e.g. Bulyan with n < 4f + 3; the model then stays as it was):\n"
            + "\n".join(
                f"- {' / '.join(KEYS[k](s) for k in args.rows)} seed {s['seed']}: "
                f"{len(s['errors'])} round(s), first: {s['errors'][0]}"
                for s in with_errors
            )
        )
    text = "\n\n".join(sections) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    if args.plot and args.columns:
        x = args.columns[0]
        rows = [k for k in args.rows if k != args.plot_panel]
        plot(summaries, rows, x, args.plot_panel, args.metric[0], args.plot)


if __name__ == "__main__":
    main()
