"""Robustness probe: strategy × attack × attacker fraction × seed, in process, no Ray.

The same server loop and ClientApp as ``fl-iot``, driven through the in-process test grid
(``tests/in_process_grid.py``), so one 10-round run of healthcare_wearables takes about a minute
instead of paying Ray's start-up every time. Defaults match ``+experiment=robustness`` (10 rounds,
``scenario.fraction_evaluate=0.2``). Every run appends one JSON line to ``--out`` (runs already
there are skipped, so an interrupted grid resumes), then a table is printed: final central
accuracy, the mean of the last three rounds (less noisy), and for strategies that report
rejections the pooled detection precision/recall and the honest devices rejected.

Usage::

    export FL_IOT_DATA_ROOT=/work/shared/data
    .venv/bin/python benchmarks/robustness_probe.py --scenario healthcare_wearables
        --strategies fedavg trusted --attacks none alie label_flip --fractions 0.2 0.4
        --seeds 0 1 --out /tmp/probe.jsonl      (one command line)
    .venv/bin/python benchmarks/robustness_probe.py --out /tmp/probe.jsonl --table-only

``--goals`` adds the goal checks of ``robustness_goals.py`` on the runs without extra overrides,
so that more seeds than the grid's three can be checked in process, e.g. ``--strategies fedavg
fedmedian fedtrimmedavg multikrum bulyan trusted --seeds 0 1 2 3 4 5 6 7 8 --goals``.

``--attacks absent`` is a control: the devices that an attack at that fraction would corrupt never
reply to training, which is what a perfect rejection leaves. ``--keep-metrics DIR`` keeps every
run's ``metrics.jsonl`` (per-device signals and weights), named by :func:`metrics_file_name`;
``--keep-summaries DIR`` keeps every run's ``summary.json`` laid out as the grid's runs, so that
``GRID_DIR=DIR REPORT_ONLY=1 bash benchmarks/run_robustness_grid.sh`` writes the robustness
report from probe runs alone (how: ``benchmarks/README.md``).

Extra Hydra overrides follow ``--``, e.g. ``-- strategy.thresholds.direction_threshold=5``; they
are part of a run's key, so variants of one strategy can share an output file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robustness_goals import ABSENT, goal_checks, probe_cells

ATTACKS = ("sign_flip", "gaussian", "scaling", "label_flip", "alie", "ipm", "weight_inflation")


def run_key(
    scenario: str, strategy: str, attack: str, fraction: float, seed: int, extra: list[str]
) -> tuple[Any, ...]:
    """What identifies a run in the output file."""
    return (scenario, strategy, attack, 0.0 if attack == "none" else fraction, seed, tuple(extra))


def metrics_file_name(
    scenario: str, strategy: str, attack: str, fraction: float, seed: int, extra: list[str]
) -> str:
    """The file name under which ``--keep-metrics`` keeps a run's ``metrics.jsonl``.

    One plain file name for any run, whatever its overrides hold (a path's ``/``, spaces,
    quotes): every character outside ``[A-Za-z0-9._=+-]`` becomes ``-`` and the overrides are cut
    to 80 characters, so the name stays readable; a digest of the exact overrides follows them,
    so runs whose overrides differ never share a file.
    """
    parts = [scenario, strategy, attack, f"{fraction:g}", f"seed{seed}"]
    if extra:
        readable = _SAFE.sub("-", "_".join(extra))[:80]
        digest = hashlib.sha256(json.dumps(extra).encode()).hexdigest()[:12]
        parts += [readable, digest]
    return _SAFE.sub("-", "_".join(parts)) + ".jsonl"


_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def run_one(
    scenario: str,
    strategy: str,
    attack: str,
    fraction: float,
    seed: int,
    rounds: int,
    extra: list[str],
    keep_metrics: Path | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
    keep_summaries: Path | None = None,
) -> dict[str, Any]:
    """One in-process run; the per-round central accuracy and detection, as a JSON-able dict.

    ``save``, if given, receives the result as soon as it exists, before ``metrics.jsonl`` is
    copied to ``keep_metrics``: a run is never lost to a failure after it. ``keep_summaries``
    keeps the run's ``summary.json`` where the robustness grid keeps its own
    (``<scenario>/clean`` or ``<scenario>/attacks``, one folder per run), so that
    ``fl-iot-report`` and ``robustness_goals.py`` read probe runs as they read the grid's.
    """
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import DictConfig, OmegaConf

    from fl_iot.client_app import build_client_app
    from fl_iot.device_runtime import run_context
    from fl_iot.run_config import compose_config
    from fl_iot.server import run_server
    from tests.in_process_grid import InProcessGrid

    overrides = [
        f"scenario={scenario}",
        f"strategy={strategy}",
        f"attack={attack}",
        f"seed={seed}",
        f"scenario.num_rounds={rounds}",
        "scenario.fraction_evaluate=0.2",
        "tracking.sinks=[jsonl,summary]",
        # The config-group choices, as a Hydra run records them: the report groups runs by them.
        f"+choices.scenario={scenario}",
        f"+choices.strategy={strategy}",
        f"+choices.attack={attack}",
    ]
    if attack != "none":
        overrides.append(f"attack.fraction={fraction}")
    if attack == ABSENT:  # the attackers of any attack: the seed and fraction choose them
        overrides[overrides.index(f"attack={attack}")] = "attack=sign_flip"
    GlobalHydra.instance().clear()
    cfg = OmegaConf.create(
        OmegaConf.to_container(compose_config((*overrides, *extra)), resolve=True)
    )
    assert isinstance(cfg, DictConfig)
    with tempfile.TemporaryDirectory(prefix="robustness_probe_") as out:
        absent = run_context(cfg).federation.attackers if attack == ABSENT else frozenset()
        grid = InProcessGrid(
            build_client_app(lambda _: cfg),
            cfg.scenario.num_devices,
            # Silent in training only: the roll call needs every node, and evaluation replies
            # do not touch the model.
            fault=lambda partition, message: (
                "silent"
                if partition in absent and message.metadata.message_type == "train"
                else None
            ),
        )
        start = time.perf_counter()
        run_server(grid, cfg, Path(out))
        seconds = time.perf_counter() - start
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").open()]
        result = summarize(scenario, strategy, attack, fraction, seed, extra, rounds, records)
        result["seconds"] = round(seconds, 1)
        if save is not None:
            save(result)
        if keep_metrics is not None:
            keep_metrics.mkdir(parents=True, exist_ok=True)
            name = metrics_file_name(scenario, strategy, attack, fraction, seed, extra)
            shutil.copy(Path(out) / "metrics.jsonl", keep_metrics / name)
        if keep_summaries is not None:
            column = "clean" if attack == "none" else "attacks"
            name = metrics_file_name(scenario, strategy, attack, fraction, seed, extra)
            kept = keep_summaries / scenario / column / name.removesuffix(".jsonl")
            kept.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(out) / "summary.json", kept / "summary.json")
    return result


def summarize(
    scenario: str,
    strategy: str,
    attack: str,
    fraction: float,
    seed: int,
    extra: list[str],
    rounds: int,
    records: list[dict[str, Any]],
) -> dict[str, Any]:
    """A run's result from its ``metrics.jsonl`` records (without its ``seconds``)."""
    accuracy, honest_rejected, caught, rejected, attackers = [], 0, 0, 0, 0
    for record in records:
        accuracy.append((record.get("central") or {}).get("accuracy"))
        devices = record.get("devices") or {}
        bad = {d for d, v in devices.items() if isinstance(v, dict) and v.get("attacker")}
        report = record.get("strategy") or {}
        if "rejected" in report:
            excluded = set(report["rejected"])
            honest_rejected += len(excluded - bad)
            caught += len(excluded & bad)
            rejected += len(excluded)
        attackers += len(bad)
    return {
        "scenario": scenario,
        "strategy": strategy,
        "attack": attack,
        "fraction": 0.0 if attack == "none" else fraction,
        "seed": seed,
        "extra": extra,
        "rounds": rounds,
        "accuracy": accuracy,
        "final": accuracy[-1] if accuracy else None,
        "reports_rejections": any("rejected" in (r.get("strategy") or {}) for r in records),
        "rejected": rejected,
        "caught": caught,
        "honest_rejected": honest_rejected,
        "attacker_replies": attackers,
    }


def append_result(path: Path, result: dict[str, Any]) -> None:
    """Append one run's result to the ``--out`` file (one JSON line)."""
    with path.open("a") as f:
        f.write(json.dumps(result) + "\n")


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per (scenario, attack, fraction, strategy), seeds side by side."""
    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in results:
        name = r["strategy"] + ("" if not r["extra"] else " " + " ".join(r["extra"]))
        cells.setdefault((r["scenario"], r["attack"], r["fraction"], name), []).append(r)
    lines = [
        "| scenario | attack | fraction | strategy | final accuracy (seeds) | mean | "
        "last-3 mean | precision | recall | honest rejected |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (scenario, attack, fraction, name), runs in sorted(cells.items()):
        runs.sort(key=lambda r: r["seed"])
        finals = [r["final"] for r in runs]
        last3 = [sum(r["accuracy"][-3:]) / len(r["accuracy"][-3:]) for r in runs]
        detection = ["–", "–", "–"]
        if all(r["reports_rejections"] for r in runs):
            rejected = sum(r["rejected"] for r in runs)
            caught = sum(r["caught"] for r in runs)
            attackers = sum(r["attacker_replies"] for r in runs)
            detection = [
                f"{caught / rejected:.2f}" if rejected else "–",
                f"{caught / attackers:.2f}" if attackers else "–",
                str(sum(r["honest_rejected"] for r in runs)),
            ]
        seeds = ", ".join(f"{f:.3f}" for f in finals)
        lines.append(
            f"| {scenario} | {attack} | {fraction:g} | {name} | {seeds} | "
            f"{sum(finals) / len(finals):.3f} | {sum(last3) / len(last3):.3f} | "
            + " | ".join(detection)
            + " |"
        )
    return "\n".join(lines)


def goal_table(results: list[dict[str, Any]], last_rounds: int | None = None) -> str:
    """The goal checks of ``robustness_goals.py`` on the probe's runs of the shipped settings.

    Runs with extra overrides are left out: the goals are about the strategies as configured.
    The metric is the final central accuracy, or with ``last_rounds`` the mean of that many last
    rounds.
    """
    return "\n".join(goal_checks(probe_cells(results, last_rounds)))


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", nargs="+", default=["healthcare_wearables"])
    parser.add_argument("--strategies", nargs="+", default=["fedavg", "trusted"])
    parser.add_argument("--attacks", nargs="+", default=["none", *ATTACKS])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    parser.add_argument("--table-only", action="store_true", help="print the table of --out")
    parser.add_argument(
        "--goals",
        action="store_true",
        help="also print the goal checks (robustness_goals.py) on the runs without overrides",
    )
    parser.add_argument(
        "--keep-metrics", type=Path, help="copy each run's metrics.jsonl (per-device signals) here"
    )
    parser.add_argument(
        "--keep-summaries",
        type=Path,
        help="keep each run's summary.json here, laid out as the robustness grid's runs (runs "
        "skipped as already in --out keep none: start with a new --out)",
    )
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the server logs every round at INFO

    results = [json.loads(x) for x in args.out.open()] if args.out.exists() else []
    done = {
        run_key(r["scenario"], r["strategy"], r["attack"], r["fraction"], r["seed"], r["extra"])
        for r in results
    }
    if not args.table_only:
        for seed in args.seeds:
            for scenario in args.scenario:
                for fraction in args.fractions:
                    for attack in args.attacks:
                        if attack == "none" and fraction != args.fractions[0]:
                            continue
                        for strategy in args.strategies:
                            key = run_key(scenario, strategy, attack, fraction, seed, extra)
                            if key in done:
                                continue
                            result = run_one(
                                scenario,
                                strategy,
                                attack,
                                fraction,
                                seed,
                                args.rounds,
                                extra,
                                args.keep_metrics,
                                save=lambda r: append_result(args.out, r),
                                keep_summaries=args.keep_summaries,
                            )
                            results.append(result)
                            done.add(key)
                            print(
                                f"{scenario} {strategy} {attack} {fraction:g} seed {seed}: "
                                f"final {result['final']:.3f} ({result['seconds']} s)",
                                flush=True,
                            )
    print(table(results))
    if args.goals:
        print("\n## Goals (final central accuracy, mean over seeds)\n")
        print(goal_table(results))
        print("\n## The same checks on the mean of the last 3 rounds\n")
        print(goal_table(results, last_rounds=3))


if __name__ == "__main__":
    main()
