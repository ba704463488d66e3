"""Scale: 1,000 devices a round out of 10,000, through gateways, against a 2-process pure loop.

Variants, each a whole process timed by this parent, side by side in one run:

``fl-iot``
    The real ``fl-iot`` command: ``scenario=vehicle_fleet_10k`` (10,000 SYNTHETIC vehicles,
    1,000 sampled a round, FedAvg, central evaluation every round, federated evaluation on 100
    devices), behind ``gateways.devices_per_gateway=K`` (``--devices-per-gateway``, default 500:
    20 gateway nodes), all default sinks.
``pure-2proc``
    ``pure_loop_parallel.py``: the same data, model, trainer, seeds and evaluations as a plain
    PyTorch loop whose devices are trained by 2 forked worker processes that inherit the data
    (the issue's reference: "a 2-process pure PyTorch loop doing the same training").
``fl-iot-trusted``, ``fl-iot-trusted-realistic`` (``--also``)
    fl-iot with ``strategy=trusted`` (every device screened, scored and weighted), and with the
    realistic fleet too (availability, battery and links of 10,000 devices on the simulated
    clock): what per-device judgement and fleet state cost at this size.
``fl-iot-aggregate``, ``fl-iot-aggregate-trusted`` (``--also``)
    Behind aggregating gateways (``gateways.mode=aggregate``): all 20 gateways sampled, 10 % of
    each one's devices train (1,000 a round, drawn per gateway, so not the pure loop's devices),
    and each gateway ships one average; with FedAvg, and with trusted aggregation per gateway.

Figures: the whole run (interpreter start to exit), the steady round (median of rounds 2..R,
from fl-iot's round lines and the loop's round marks) and the peak PSS summed over each process
tree (Ray's processes included), sampled every ``--interval`` s. Ratios are fl-iot over pure,
within one repetition. ``--growth`` then runs fl-iot alone at other round sizes (devices per
round, population fixed at 10,000) for ``--growth-rounds`` rounds and reports the steady round
per device update, with a plot (``--plot``).

Run::

    .venv/bin/python benchmarks/scale.py --out scale.json --plot docs/scale.png
    .venv/bin/python benchmarks/scale.py --skip-growth            # the goal figures only
    .venv/bin/python benchmarks/scale.py --skip-growth --also fl-iot-trusted \
        fl-iot-trusted-realistic

Takes about 10 minutes on a 2-core machine; run it with ``nohup`` and read the log.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_overhead import (  # noqa: E402
    MIB,
    RunRecord,
    _child_marks,
    _fliot_marks,
    child_env,
    provenance,
    run_sampled,
)
from overhead_workload import workload_from_config  # noqa: E402

POPULATION = 10_000


@dataclass
class ScaleRun:
    """One whole-process run of one variant."""

    variant: str
    devices_per_round: int
    rounds: int
    returncode: int
    wall_s: float
    steady_round_s: float | None
    round_s: list[float]
    peak_pss_gib: float
    peak_rss_gib: float
    final_central: dict[str, float]

    @property
    def per_update_ms(self) -> float | None:
        """Steady round per device update, in milliseconds."""
        if self.steady_round_s is None:
            return None
        return 1000.0 * self.steady_round_s / self.devices_per_round


def overrides(devices_per_round: int, rounds: int, devices_per_gateway: int) -> list[str]:
    """fl-iot's overrides for one run of the scale scenario."""
    return [
        "scenario=vehicle_fleet_10k",
        f"scenario.num_rounds={rounds}",
        f"scenario.fraction_train={devices_per_round / POPULATION}",
        f"gateways.devices_per_gateway={devices_per_gateway}",
    ]


VARIANT_OVERRIDES = {
    "fl-iot": [],
    "fl-iot-trusted": ["strategy=trusted"],
    "fl-iot-trusted-realistic": ["strategy=trusted", "fleet=realistic"],
    # Aggregating gateways: every gateway sampled, a tenth of each one's devices (1,000 of
    # 10,000), one averaged update per gateway to the server.
    "fl-iot-aggregate": [
        "gateways.mode=aggregate",
        "scenario.fraction_train=1.0",
        "gateways.device_fraction=0.1",
    ],
    "fl-iot-aggregate-trusted": [
        "gateways.mode=aggregate",
        "scenario.fraction_train=1.0",
        "gateways.device_fraction=0.1",
        "strategy=trusted",
    ],
}
"""The fl-iot variants: the scenario as it is, with trusted aggregation (and its fleet), and
behind aggregating gateways (``gateways.mode=aggregate``)."""


def run_variant(
    variant: str,
    devices_per_round: int,
    rounds: int,
    devices_per_gateway: int,
    work_dir: Path,
    interval_s: float,
    timeout_s: float,
) -> ScaleRun:
    """Run one variant as a whole process and sample its process tree."""
    args = overrides(devices_per_round, rounds, devices_per_gateway)
    run_dir = work_dir / f"{variant}-{devices_per_round}"
    run_dir.mkdir(parents=True, exist_ok=True)
    if variant in VARIANT_OVERRIDES:
        cmd = [
            str(Path(sys.executable).with_name("fl-iot")),
            f"hydra.run.dir={run_dir}",
            *args,
            *VARIANT_OVERRIDES[variant],
        ]
    else:
        workload = workload_from_config(variant, args)
        workload_file = run_dir / "workload.json"
        workload_file.write_text(workload.to_json(), encoding="utf-8")
        cmd = [
            sys.executable,
            str(BENCH_DIR / "pure_loop_parallel.py"),
            "--workload",
            str(workload_file),
            "--processes",
            "2",
        ]
    log_path = run_dir / "stdout.log"
    fl_iot = variant in VARIANT_OVERRIDES
    env = child_env("fl-iot" if fl_iot else "pure")
    returncode, wall_s, memory, _ = run_sampled(cmd, log_path, env, interval_s, 4, timeout_s)
    record = RunRecord("scale", variant, 0, returncode, wall_s, memory=memory)
    marks = _fliot_marks(run_dir, rounds, record) if fl_iot else _child_marks(log_path, record)
    ends = [marks.get(f"round_{r}") for r in range(0, rounds + 1)]
    # Rounds 2..R: round 1 also pays for Ray's start, the roll call and the first evaluation.
    round_s = [b - a for a, b in itertools.pairwise(ends[1:]) if a is not None and b is not None]
    return ScaleRun(
        variant=variant,
        devices_per_round=devices_per_round,
        rounds=rounds,
        returncode=returncode,
        wall_s=wall_s,
        steady_round_s=statistics.median(round_s) if round_s else None,
        round_s=round_s,
        peak_pss_gib=memory.peak_pss_mib * MIB / 2**30,
        peak_rss_gib=memory.peak_rss_mib * MIB / 2**30,
        final_central=dict(record.final_central),
    )


def goal_table(runs: list[ScaleRun]) -> str:
    """The goal figures of one repetition as a markdown table."""
    by = {r.variant: r for r in runs}
    fl, pure = by["fl-iot"], by["pure-2proc"]
    rows = [
        "| | fl-iot (gateways) | pure PyTorch, 2 processes | fl-iot / pure | goal |",
        "|---|---|---|---|---|",
        f"| whole run | {fl.wall_s:.1f} s | {pure.wall_s:.1f} s | "
        f"{fl.wall_s / pure.wall_s:.2f}x | <= 1.5x |",
    ]
    if fl.steady_round_s and pure.steady_round_s:
        rows.append(
            f"| steady round | {fl.steady_round_s:.2f} s | {pure.steady_round_s:.2f} s | "
            f"{fl.steady_round_s / pure.steady_round_s:.2f}x | <= 1.3x |"
        )
    rows.append(
        f"| peak PSS, process tree | {fl.peak_pss_gib:.2f} GiB | {pure.peak_pss_gib:.2f} GiB | "
        f"{fl.peak_pss_gib / pure.peak_pss_gib:.2f}x | fl-iot <= 4 GiB |"
    )
    accuracy = [r.final_central.get("accuracy") for r in (fl, pure)]
    if all(a is not None for a in accuracy):
        rows.append(f"| final central accuracy | {accuracy[0]:.3f} | {accuracy[1]:.3f} | | |")
    for name in sorted(set(by) - {"fl-iot", "pure-2proc"}):
        other = by[name]
        steady = f"{other.steady_round_s:.2f} s" if other.steady_round_s else "n/a"
        rows.append(
            f"| {name}: whole run, steady round, peak PSS | {other.wall_s:.1f} s, {steady}, "
            f"{other.peak_pss_gib:.2f} GiB | | | |"
        )
    return "\n".join(rows)


def growth_table(runs: list[ScaleRun]) -> str:
    """Steady round and cost per device update at each round size."""
    rows = [
        "| devices a round | steady round | per device update | whole run | peak PSS |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: r.devices_per_round):
        steady = f"{r.steady_round_s:.2f} s" if r.steady_round_s else "n/a"
        per = f"{r.per_update_ms:.2f} ms" if r.per_update_ms else "n/a"
        rows.append(
            f"| {r.devices_per_round:,} | {steady} | {per} | {r.wall_s:.1f} s | "
            f"{r.peak_pss_gib:.2f} GiB |"
        )
    return "\n".join(rows)


def plot(runs: list[ScaleRun], path: Path) -> None:
    """Steady round and cost per update against devices a round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted((r for r in runs if r.steady_round_s), key=lambda r: r.devices_per_round)
    x = [r.devices_per_round for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(x, [r.steady_round_s for r in runs], "o-")
    left.set(xlabel="devices a round", ylabel="steady round (s)", title="round time")
    right.plot(x, [r.per_update_ms for r in runs], "o-")
    right.set(
        xlabel="devices a round", ylabel="ms per device update", title="cost per device update"
    )
    right.set_ylim(bottom=0)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(f"fl-iot, {POPULATION:,} vehicles behind gateways, 2 cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices-per-round", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--devices-per-gateway", type=int, default=500)
    parser.add_argument("--reps", type=int, default=1, help="repetitions of the goal pair")
    parser.add_argument(
        "--also",
        nargs="*",
        default=[],
        choices=sorted(set(VARIANT_OVERRIDES) - {"fl-iot"}),
        help="fl-iot variants to run after the goal pair, in each repetition",
    )
    parser.add_argument(
        "--growth", type=int, nargs="*", default=[1000, 2500, 5000, 10000], metavar="D"
    )
    parser.add_argument("--growth-rounds", type=int, default=3)
    parser.add_argument("--skip-growth", action="store_true")
    parser.add_argument("--interval", type=float, default=0.5, help="memory sampling period, s")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per run, s")
    parser.add_argument("--out", type=Path, help="write every run as JSON here")
    parser.add_argument("--plot", type=Path, help="write the growth plot here (PNG)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, Any] = {"provenance": provenance(), "goal": [], "growth": []}
    with tempfile.TemporaryDirectory(prefix="fl-iot-scale-") as tmp:
        work = Path(tmp)
        for rep in range(args.reps):
            order = ["fl-iot", "pure-2proc"] if rep % 2 == 0 else ["pure-2proc", "fl-iot"]
            runs = [
                run_variant(
                    v,
                    args.devices_per_round,
                    args.rounds,
                    args.devices_per_gateway,
                    work / f"rep{rep}",
                    args.interval,
                    args.timeout,
                )
                for v in [*order, *args.also]
            ]
            results["goal"].append([asdict(r) for r in runs])
            print(f"\nrepetition {rep + 1} of {args.reps} (order {', '.join(order)}):")
            print(goal_table(runs), flush=True)
            if any(r.returncode != 0 for r in runs):
                print("a run failed:", [(r.variant, r.returncode) for r in runs], flush=True)
        growth: list[ScaleRun] = []
        if not args.skip_growth:
            for devices in args.growth:
                growth.append(
                    run_variant(
                        "fl-iot",
                        devices,
                        args.growth_rounds,
                        args.devices_per_gateway,
                        work / "growth",
                        args.interval,
                        args.timeout,
                    )
                )
                print(f"growth: {devices} devices a round done", flush=True)
            results["growth"] = [asdict(r) for r in growth]
            print("\nfl-iot, cost per device update by round size:")
            print(growth_table(growth), flush=True)
            if args.plot:
                plot(growth, args.plot)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
