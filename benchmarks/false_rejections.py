"""False rejections without attack: how often trusted aggregation refuses an honest device.

Every scenario runs with its own fleet size, fraction of devices per round and number of rounds
(the sizes the scenarios and the robustness grid use), no attack, in process (the robustness
probe's loop, no Ray). A device-round counts when the device's reply was well formed and scored
(status ``accepted`` or ``anomalous`` in the strategy's round report); it is a false rejection
when the scores refused it (``anomalous``). Honest replies refused as malformed are counted
apart: they are a defect of the fleet or the screening, not of the statistics. The goal is at
most 1 % of the honest device-rounds of every scenario.

Usage (from the repository root)::

    source benchmarks/offline_env.sh
    .venv/bin/python benchmarks/false_rejections.py --seeds 0 1 2 --out /tmp/false_rejections.jsonl

Runs already in ``--out`` are skipped, so an interrupted measurement resumes; the table is printed
at the end (``--table-only`` prints it from ``--out`` alone).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
SCENARIOS = ("healthcare_wearables", "industrial_maintenance", "smart_home", "vehicle_fleet")
GOAL = 0.01


def scenario_shape(scenario: str) -> dict[str, Any]:
    """The scenario's composed fleet size, devices per round and rounds."""
    from hydra.core.global_hydra import GlobalHydra

    from fl_iot.config import devices_per_round
    from fl_iot.run_config import compose_config

    GlobalHydra.instance().clear()
    cfg = compose_config((f"scenario={scenario}",))
    return {
        "num_devices": int(cfg.scenario.num_devices),
        "per_round": devices_per_round(cfg),
        "rounds": int(cfg.scenario.num_rounds),
    }


def count_rejections(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Honest device-rounds scored, refused by the scores and refused as malformed.

    From a run's round records; ``reasons`` counts the refusals by the scores per reason, its
    figures replaced by ``…`` (``"update norm too large (…× the round median > …)"``).
    """
    scored = rejected = malformed = 0
    reasons: Counter[str] = Counter()
    for record in records:
        report = record.get("strategy") or {}
        devices = record.get("devices") or {}
        refused = report.get("rejected") or {}
        for device, entry in (report.get("devices") or {}).items():
            if (devices.get(device) or {}).get("attacker"):
                continue
            status = entry.get("status")
            if status in ("accepted", "anomalous"):
                scored += 1
            if status == "anomalous":
                rejected += 1
                reasons[_NUMBER.sub("…", str(refused.get(device, "?")))] += 1
            elif status == "malformed":
                malformed += 1
    return {
        "scored": scored,
        "rejected": rejected,
        "malformed": malformed,
        "reasons": dict(reasons),
    }


def run(
    scenario: str, strategy: str, seed: int, extra: list[str], rounds: int | None = None
) -> dict[str, Any]:
    """One clean run of ``scenario`` at its own size; its false-rejection counts.

    ``rounds`` stops it early (the scenario's own number of rounds by default).
    """
    from robustness_probe import run_one

    shape = scenario_shape(scenario)
    if rounds is not None:
        shape["rounds"] = rounds
    with tempfile.TemporaryDirectory(prefix="false_rejections_") as kept:
        result = run_one(scenario, strategy, "none", 0.0, seed, shape["rounds"], extra, Path(kept))
        (metrics,) = Path(kept).glob("*.jsonl")
        records = [json.loads(line) for line in metrics.open()]
    return {
        "scenario": scenario,
        "strategy": strategy,
        "seed": seed,
        "extra": extra,
        **shape,
        **count_rejections(records),
        "final": result["final"],
        "seconds": result["seconds"],
    }


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per scenario and strategy, seeds pooled."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        name = r["strategy"] + ("" if not r["extra"] else " " + " ".join(r["extra"]))
        cells.setdefault((r["scenario"], name), []).append(r)
    lines = [
        "| scenario | strategy | devices (per round) × rounds | seeds | honest device-rounds "
        "| rejected | rate | goal ≤ 1 % | per seed | reasons | malformed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (scenario, name), runs in sorted(cells.items()):
        runs = sorted(runs, key=lambda r: r["seed"])
        scored = sum(r["scored"] for r in runs)
        rejected = sum(r["rejected"] for r in runs)
        reasons: Counter[str] = Counter()
        for r in runs:
            reasons.update(r["reasons"])
        rate = rejected / scored if scored else 0.0
        first = runs[0]
        lines.append(
            f"| {scenario} | {name} | {first['num_devices']} ({first['per_round']}) × "
            f"{first['rounds']} | {', '.join(str(r['seed']) for r in runs)} "
            f"| {scored} | {rejected} | {100 * rate:.2f} % | {'yes' if rate <= GOAL else 'no'} "
            f"| {', '.join(str(r['rejected']) for r in runs)} | "
            + ("; ".join(f"{k}: {v}" for k, v in reasons.most_common()) or "–")
            + f" | {sum(r.get('malformed', 0) for r in runs)} |"
        )
    return "\n".join(lines)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--strategies", nargs="+", default=["trusted", "trusted_fedavg"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    parser.add_argument("--table-only", action="store_true", help="print the table of --out")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)

    results = [json.loads(x) for x in args.out.open()] if args.out.exists() else []
    done = {(r["scenario"], r["strategy"], r["seed"], tuple(r["extra"])) for r in results}
    if not args.table_only:
        for seed in args.seeds:
            for scenario in args.scenarios:
                for strategy in args.strategies:
                    if (scenario, strategy, seed, tuple(extra)) in done:
                        continue
                    result = run(scenario, strategy, seed, extra)
                    with args.out.open("a") as f:
                        f.write(json.dumps(result) + "\n")
                    results.append(result)
                    print(
                        f"{scenario} {strategy} seed {seed}: {result['rejected']} of "
                        f"{result['scored']} honest device-rounds rejected ({result['seconds']} s)",
                        flush=True,
                    )
    print(table(results))


if __name__ == "__main__":
    main()
