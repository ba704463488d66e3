"""Communication: codec × scenario × seed, bytes on the wire against accuracy.

Every scenario at its default size, in process (the robustness probe's loop, no Ray), once per
codec (``compression=none|float16|qsgd8|qsgd4|topk|topk_3pct|topk_q8``) and seed. Each run's
``summary.json`` ``communication`` section gives the measured bytes (payload and whole
messages, up and down), the uncompressed uplink computed beside them and the raw-data baseline.
``attack`` runs ``strategy=trusted`` on healthcare_wearables at 20 % ALIE and 20 % scaling, with
and without a codec; ``downlink`` adds ``compression.downlink`` (QSGD 8-bit) to a codec on every
scenario. Every run appends one JSON line to ``--out`` (runs already there are
skipped); the tables, and with ``--plot P`` the accuracy-against-bytes front (a PNG at ``P``,
``docs/communication.png``), are written from it.

Usage (from the repository root; about 30 minutes for the codec grid here)::

    source benchmarks/offline_env.sh
    .venv/bin/python benchmarks/communication.py codecs --out /tmp/communication.jsonl
    .venv/bin/python benchmarks/communication.py attack --codec topk --out /tmp/communication.jsonl
    .venv/bin/python benchmarks/communication.py downlink --out /tmp/communication.jsonl
    .venv/bin/python benchmarks/communication.py table --out /tmp/communication.jsonl --plot P
    .venv/bin/python benchmarks/communication.py overhead --codec topk --out /dev/null
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCENARIOS = ("healthcare_wearables", "industrial_maintenance", "smart_home", "vehicle_fleet")
CODECS = ("none", "float16", "qsgd8", "qsgd4", "topk", "topk_3pct", "topk_q8")
SEEDS = (0, 1, 2)
GOAL_REDUCTION, GOAL_LOSS = 0.97, 0.01
DOWNLINK = ["+compression.downlink={codec:qsgd,bits:8}"]


def run_one(scenario: str, codec: str, seed: int, extra: list[str]) -> dict[str, Any]:
    """One in-process run; its final scores and its communication section."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import DictConfig, OmegaConf

    from fl_iot.client_app import build_client_app
    from fl_iot.run_config import compose_config
    from fl_iot.server import run_server
    from tests.in_process_grid import InProcessGrid

    overrides = [
        f"scenario={scenario}",
        f"compression={codec}",
        f"seed={seed}",
        "tracking.sinks=[summary]",
        *extra,
    ]
    GlobalHydra.instance().clear()
    cfg = OmegaConf.create(OmegaConf.to_container(compose_config(tuple(overrides)), resolve=True))
    assert isinstance(cfg, DictConfig)
    with tempfile.TemporaryDirectory(prefix="communication_") as out:
        grid = InProcessGrid(build_client_app(lambda _: cfg), cfg.scenario.num_devices)
        started = time.perf_counter()
        summary = run_server(grid, cfg, Path(out)).summary
        seconds = time.perf_counter() - started
    assert summary is not None
    return {
        "scenario": scenario,
        "codec": codec,
        "seed": seed,
        "extra": extra,
        "accuracy": summary.final.central.get("accuracy"),
        "macro_f1": summary.final.central.get("macro_f1"),
        "failed": summary.clients.failed,
        "communication": summary.communication,
        "seconds": round(seconds, 1),
    }


def key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["scenario"], row["codec"], row["seed"], tuple(row["extra"]))


def measure(jobs: list[tuple[str, str, int, list[str]]], out: Path) -> None:
    done = (
        {key(json.loads(line)) for line in out.read_text().splitlines()} if out.exists() else set()
    )
    for scenario, codec, seed, extra in jobs:
        if (scenario, codec, seed, tuple(extra)) in done:
            continue
        row = run_one(scenario, codec, seed, extra)
        with out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(
            f"{scenario} {codec} seed {seed} {' '.join(extra)}: accuracy {row['accuracy']:.3f}, "
            f"uplink payload -{row['communication']['uplink_payload_reduction']:.1%} "
            f"({row['seconds']} s)",
            flush=True,
        )


def _mean(rows: list[dict[str, Any]], pick: Any) -> float:
    return statistics.fmean(pick(r) for r in rows)


def _kib(count: float) -> str:
    return f"{count / 1024:,.1f}"


def codec_table(rows: list[dict[str, Any]]) -> str:
    """Per scenario and codec, means over seeds; accuracy against the uncompressed run's."""
    lines = [
        "| scenario | codec | seeds | accuracy | Δ vs none (points) | macro-F1 | uplink payload "
        "KiB/run | reduction | uplink messages KiB/run | downlink messages KiB/run | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    plain = [r for r in rows if not r["extra"]]
    for scenario in SCENARIOS:
        base = [r for r in plain if r["scenario"] == scenario and r["codec"] == "none"]
        if not base:
            continue
        base_accuracy = _mean(base, lambda r: r["accuracy"])
        for codec in CODECS:
            group = [r for r in plain if r["scenario"] == scenario and r["codec"] == codec]
            if not group:
                continue
            accuracy = _mean(group, lambda r: r["accuracy"])
            reduction = _mean(group, lambda r: r["communication"]["uplink_payload_reduction"])
            meets = reduction >= GOAL_REDUCTION and accuracy >= base_accuracy - GOAL_LOSS
            lines.append(
                f"| {scenario} | {codec} | {len(group)} | {accuracy:.3f} | "
                f"{100 * (accuracy - base_accuracy):+.1f} | "
                f"{_mean(group, lambda r: r['macro_f1']):.3f} | "
                f"{_kib(_mean(group, lambda r: r['communication']['payload_bytes_up']))} | "
                f"{reduction:.1%} | "
                f"{_kib(_mean(group, lambda r: r['communication']['message_bytes_up']))} | "
                f"{_kib(_mean(group, lambda r: r['communication']['message_bytes_down']))} | "
                f"{'yes' if meets else 'no'} |"
            )
    return "\n".join(lines)


def raw_table(rows: list[dict[str, Any]]) -> str:
    """Federated traffic per device against shipping its data (seed 0, uncompressed and topk)."""
    lines = [
        "| scenario | codec | FL uplink per device per round (messages) | FL uplink per "
        "device, whole run | raw data per device, once | sensors' stream per device per day | "
        "basis |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        for codec in ("none", "topk"):
            group = [
                r
                for r in rows
                if not r["extra"]
                and r["scenario"] == scenario
                and r["codec"] == codec
                and r["seed"] == 0
            ]
            if not group or "raw_data" not in group[0]["communication"]:
                continue
            c = group[0]["communication"]
            raw = c["raw_data"]
            devices = raw["devices"]
            lines.append(
                f"| {scenario} | {codec} | {_kib(raw['uplink_bytes_per_round'] / devices)} KiB | "
                f"{_kib(c['message_bytes_up'] / devices)} KiB | "
                f"{_kib(raw['bytes_once'] / devices)} KiB | "
                f"{_kib(raw['bytes_per_second_per_device'] * 86400)} KiB | {raw['basis']} |"
            )
    return "\n".join(lines)


def attack_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| attack | codec | seeds | accuracy | uplink payload reduction |",
        "|---|---|---|---|---|",
    ]
    attacked = [r for r in rows if any(e.startswith("attack=") for e in r["extra"])]
    for extra in sorted({tuple(r["extra"]) for r in attacked}):
        for codec in CODECS:
            group = [r for r in attacked if tuple(r["extra"]) == extra and r["codec"] == codec]
            if group:
                reduction = _mean(group, lambda r: r["communication"]["uplink_payload_reduction"])
                lines.append(
                    f"| {' '.join(extra)} | {codec} | {len(group)} | "
                    f"{_mean(group, lambda r: r['accuracy']):.3f} | {reduction:.1%} |"
                )
    return "\n".join(lines)


def downlink_table(rows: list[dict[str, Any]]) -> str:
    """The codec with and without a compressed downlink, per scenario (means over seeds)."""
    lines = [
        "| scenario | codec | downlink | seeds | accuracy | uplink payload reduction | "
        "downlink payload reduction | downlink messages KiB/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scenario in SCENARIOS:
        for extra in ([], DOWNLINK):
            group = [
                r
                for r in rows
                if r["scenario"] == scenario and r["extra"] == extra and r["codec"] != "none"
            ]
            codecs = sorted({r["codec"] for r in rows if r["extra"] == DOWNLINK})
            for codec in codecs:
                of_codec = [r for r in group if r["codec"] == codec]
                if not of_codec:
                    continue
                c = [r["communication"] for r in of_codec]
                down = [x.get("downlink_payload_reduction", 0.0) for x in c]
                lines.append(
                    f"| {scenario} | {codec} | {'qsgd8' if extra else 'none'} | {len(of_codec)} | "
                    f"{_mean(of_codec, lambda r: r['accuracy']):.3f} | "
                    f"{statistics.fmean(x['uplink_payload_reduction'] for x in c):.1%} | "
                    f"{statistics.fmean(down):.1%} | "
                    f"{_kib(statistics.fmean(x['message_bytes_down'] for x in c))} |"
                )
    return "\n".join(lines)


def overhead(codec: str) -> str:
    """What one real train reply of healthcare_wearables is made of on the wire, object by object.

    One device of the scenario trains once in process with ``compression=<codec>``; the reply is
    then broken into the objects Flower serialises (the message, its record dict, each record,
    each array and chunk) with each one's bytes.
    """
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import DictConfig, OmegaConf

    from fl_iot.client_app import build_client_app
    from fl_iot.device_runtime import fresh_model, run_context
    from fl_iot.run_config import compose_config
    from tests.in_process_grid import InProcessGrid

    GlobalHydra.instance().clear()
    composed = compose_config((f"compression={codec}",))
    cfg = OmegaConf.create(OmegaConf.to_container(composed, resolve=True))
    assert isinstance(cfg, DictConfig)
    grid = InProcessGrid(build_client_app(lambda _: cfg), cfg.scenario.num_devices)
    model = ArrayRecord(fresh_model(run_context(cfg)).state_dict())
    ask = Message(
        RecordDict({"arrays": model, "config": ConfigRecord({"server-round": 1})}),
        dst_node_id=grid.node_ids[0],
        message_type="train",
    )
    (reply,) = grid.send_and_receive([ask])
    names = {id(record): name for name, record in reply.content.items()}
    lines = [f"| object ({codec} reply) | bytes |", "|---|---|"]
    total = 0
    for obj in get_all_nested_objects(reply).values():
        size = len(obj.deflate())
        total += size
        label = type(obj).__name__ + (f" `{names[id(obj)]}`" if id(obj) in names else "")
        lines.append(f"| {label} | {size:,} |")
    lines.append(f"| **whole message** | **{total:,}** |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against uplink payload bytes per run, one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(SCENARIOS), figsize=(4 * len(SCENARIOS), 3.6))
    plain = [r for r in rows if not r["extra"]]
    for axis, scenario in zip(axes, SCENARIOS, strict=True):
        for codec in CODECS:
            group = [r for r in plain if r["scenario"] == scenario and r["codec"] == codec]
            if group:
                axis.scatter(
                    [r["communication"]["payload_bytes_up"] / 1024 for r in group],
                    [r["accuracy"] for r in group],
                    label=codec,
                    s=18,
                )
        axis.set_xscale("log")
        axis.set_title(scenario, fontsize=9)
        axis.set_xlabel("uplink payload per run (KiB, log)")
        axis.set_ylabel("final central accuracy")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("codecs", "attack", "downlink", "overhead", "table"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--codecs", nargs="+", default=list(CODECS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--codec", default="topk", help="the codec of the attack runs")
    parser.add_argument("--plot", type=Path, help="where to draw the accuracy-bytes front")
    args = parser.parse_args()
    if args.mode == "overhead":
        print(overhead(args.codec))
        return
    if args.mode == "codecs":
        measure(
            [(s, c, seed, []) for s in args.scenarios for c in args.codecs for seed in args.seeds],
            args.out,
        )
    elif args.mode == "attack":
        attacks = [
            ["strategy=trusted", f"attack={a}", "attack.fraction=0.2"] for a in ("alie", "scaling")
        ]
        measure(
            [
                ("healthcare_wearables", c, seed, extra)
                for extra in attacks
                for c in ("none", args.codec)
                for seed in args.seeds
            ],
            args.out,
        )
    elif args.mode == "downlink":
        measure(
            [(s, args.codec, seed, DOWNLINK) for s in args.scenarios for seed in args.seeds],
            args.out,
        )
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line]
    tables = (codec_table(rows), raw_table(rows), attack_table(rows), downlink_table(rows))
    print(*tables, sep="\n\n")
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
