"""How a Hydra sweep spreads over machines: serially, split by its values, or on a Ray cluster.

The same sweep (``scenario=smart_home`` over ``--seeds`` seeds, ``-m seed=0,1,...``) four ways:

- ``serial``: this machine alone, one ``fl-iot -m`` process; the jobs run one after another and
  Ray gets all the machine's CPUs.
- ``split``: two machines simulated on this one: two ``fl-iot -m`` processes side by side, each
  given every second seed, its own ``hydra.sweep.dir`` and half the CPUs (``engine.num_cpus=1``).
  On 2 cores the two "machines" compete for the same two cores, which two real machines would
  not.
- ``split-alone``: the same two shares, each run alone with the machine to itself (one after
  the other); the sweep's time is the longer share's: what two machines like this one take, as
  their shares share nothing.
- ``cluster``: one ``fl-iot -m`` process attached (``RAY_ADDRESS``) to a Ray cluster of two
  1-CPU nodes on this machine (``ray start --head``, ``ray start --address``): as many CPUs as
  ``serial`` in all. The jobs still run one after another, each job's ClientApps spread over
  both nodes. The cluster is started before the clock starts and stopped after it stops, as it
  outlives a sweep on real machines; its start-up is printed apart.

Every variant runs in a child process of its own, so that its ``getrusage(RUSAGE_CHILDREN)``
peak is its own: the peak RSS of the largest single process among those the variant waited for
and the descendants they waited for, not the sum over processes. The variants alternate within
each repetition. Prints the wall time of every repetition (with the machine's 1-min load before
it: what else runs on the machine shows there), the median and its ratio to ``serial``.

Usage (from the repository root; about 10 minutes with the defaults on 2 cores)::

    source benchmarks/offline_env.sh
    .venv/bin/python benchmarks/sweep_spread.py --seeds 4 --rounds 10 --reps 3

Other Hydra overrides for every job follow ``--``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("serial", "split", "split-alone", "cluster")
MACHINES = 2
"""How many machines ``split`` and ``cluster`` spread over (1 CPU each)."""

NODE_START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
OFFLINE = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "WANDB_MODE": "offline",
    "RAY_USAGE_STATS_ENABLED": "0",
}

NODES_PROBE = """
import sys, time
import ray

ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + float(sys.argv[2])
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[3]):
    if time.monotonic() > deadline:
        sys.exit(f"fewer than {sys.argv[3]} nodes joined")
    time.sleep(0.5)
"""
"""Waits until ``argv[3]`` nodes of the cluster at ``argv[1]`` are alive."""


def environment() -> dict[str, str]:
    """The environment of every command: offline, with the data root ``offline_env.sh`` sets."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OFFLINE)
    env.setdefault("FL_IOT_DATA_ROOT", str(REPO.parent / "shared" / "data"))
    return env


def fl_iot_sweep(
    seeds: Sequence[int], rounds: int, sweep_dir: Path, overrides: Sequence[str]
) -> list[str]:
    """The ``fl-iot -m`` command of one machine's share of the sweep."""
    return [
        sys.executable,
        "-m",
        "fl_iot",
        "-m",
        "scenario=smart_home",
        f"seed={','.join(str(s) for s in seeds)}",
        f"scenario.num_rounds={rounds}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def ray_cluster(work: Path, env: dict[str, str]) -> Iterator[tuple[str, float]]:
    """A head and ``MACHINES - 1`` worker nodes, 1 CPU each; yields the address, start-up time.

    Each node is a ``ray start --block`` process in a session of its own; they are stopped by
    SIGTERM (``ray start --block`` then stops what it started), never by ``ray stop``, which would
    stop every Ray process of this user.
    """
    ray = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # socket paths stay short
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    nodes: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()

    def start(name: str, *args: str) -> None:
        with (work / f"{name}.log").open("w") as log:
            nodes.append(
                subprocess.Popen(
                    [
                        ray,
                        "start",
                        *args,
                        *common,
                        "--block",
                        "--dashboard-agent-listen-port",
                        str(free_port()),
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    try:
        start(
            "head",
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={temp_dir}",
        )
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if nodes[0].poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the Ray head did not start; see {work / 'head.log'}")
            time.sleep(0.3)
        for k in range(1, MACHINES):
            start(f"worker{k}", f"--address={address}")
        subprocess.run(
            [sys.executable, "-c", NODES_PROBE, address, str(NODE_START_TIMEOUT_S), str(MACHINES)],
            env=env,
            check=True,
            capture_output=True,
        )
        yield address, time.monotonic() - started
    finally:
        for node in reversed(nodes):
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        subprocess.run(["rm", "-rf", temp_dir], check=False)


def run_variant(
    variant: str, seeds: list[int], rounds: int, work: Path, overrides: list[str]
) -> dict[str, Any]:
    """Run one variant in this process's children; its wall time and what completed."""
    env = environment()
    load_before = os.getloadavg()[0]
    cluster_start_s = None
    halves = [seeds[k::MACHINES] for k in range(MACHINES)]
    with contextlib.ExitStack() as stack:
        if variant == "cluster":
            address, cluster_start_s = stack.enter_context(ray_cluster(work, env))
            env = {**env, "RAY_ADDRESS": address}
            batches = [[(seeds, overrides)]]
        elif variant == "split":  # two machines in one: each gets half of the CPUs
            batches = [[(half, [*overrides, "engine.num_cpus=1"]) for half in halves]]
        elif variant == "split-alone":  # each machine's share with the machine to itself
            batches = [[(half, overrides)] for half in halves]
        else:
            batches = [[(seeds, overrides)]]
        shares_s: list[float] = []
        codes: list[int] = []
        for batch in batches:
            started = time.monotonic()
            processes: list[subprocess.Popen[bytes]] = []
            for share, extra in batch:
                k = len(codes) + len(processes)
                with (work / f"machine{k}.log").open("w") as log:
                    command = fl_iot_sweep(share, rounds, work / f"machine{k}", extra)
                    processes.append(
                        subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
                    )
            ended: dict[int, float] = {}
            while len(ended) < len(processes):  # each share's own end, whichever ends first
                for k, process in enumerate(processes):
                    if k not in ended and process.poll() is not None:
                        ended[k] = time.monotonic() - started
                time.sleep(0.1)
            codes.extend(int(process.returncode) for process in processes)
            shares_s.extend(ended[k] for k in range(len(processes)))
    summaries = [json.loads(p.read_text()) for p in work.glob("machine*/*/summary.json")]
    return {
        "variant": variant,
        # split-alone: the machines share nothing, so the sweep ends with its longest share
        "wall_s": max(shares_s),
        "shares_s": shares_s,
        "exit_codes": codes,
        "completed": sum(s.get("status") == "completed" for s in summaries),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "load_before": load_before,
        "cluster_start_s": cluster_start_s,
    }


def main(argv: list[str] | None = None) -> None:
    """Run every variant ``--reps`` times, alternating, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4, help="jobs in the sweep (seed=0..n-1)")
    parser.add_argument("--rounds", type=int, default=10, help="scenario.num_rounds per job")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every variant")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # a child's
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job, after --")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.rounds < 1 or args.reps < 1:
        parser.error("--seeds, --rounds and --reps must be at least 1")
    seeds = list(range(args.seeds))
    if args.variant:  # a child: one variant, one JSON line
        result = run_variant(args.variant, seeds, args.rounds, args.work, args.overrides)
        print(json.dumps(result))
        return

    results: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory(prefix="sweep-spread-") as tmp:
        for rep in range(args.reps):
            for variant in args.variants:
                work = Path(tmp) / f"{variant}-{rep}"
                work.mkdir()
                child = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--variant",
                        variant,
                        "--work",
                        str(work),
                        f"--seeds={args.seeds}",
                        f"--rounds={args.rounds}",
                        "--",
                        *args.overrides,
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if child.returncode != 0:
                    logs = "\n".join(p.read_text()[-1500:] for p in work.glob("*.log"))
                    sys.exit(f"{variant} failed:\n{child.stderr[-3000:]}\n{logs}")
                result = json.loads(child.stdout.strip().splitlines()[-1])
                results[variant].append(result)
                print(
                    f"rep {rep + 1} {variant:11s} {result['wall_s']:6.1f} s, "
                    f"1-min load before {result['load_before']:.1f} "
                    f"(shares {', '.join(f'{t:.1f}' for t in result['shares_s'])} s; "
                    f"{result['completed']}/{args.seeds} completed, exit {result['exit_codes']})",
                    flush=True,
                )
    print_table(results, args)


def print_table(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    """One line per variant: every repetition's wall time, the median, the ratio, the peak RSS."""
    load = os.getloadavg()[0]
    print(
        f"\n{args.seeds} jobs of smart_home x {args.rounds} rounds, {os.cpu_count()} cores, "
        f"1-min load {load:.1f} at the end"
    )
    medians = {v: statistics.median(float(r["wall_s"]) for r in rs) for v, rs in results.items()}
    base = medians.get("serial")
    print("| variant | wall s (each rep) | median s | / serial | largest process peak RSS MiB |")
    print("|---|---|---|---|---|")
    for variant, runs in results.items():
        walls = ", ".join(f"{float(r['wall_s']):.1f}" for r in runs)
        ratio = f"{medians[variant] / base:.2f}" if base else "-"
        rss = max(float(r["peak_rss_mib"]) for r in runs)
        print(f"| {variant} | {walls} | {medians[variant]:.1f} | {ratio} | {rss:.0f} |")
    starts = [float(r["cluster_start_s"]) for r in results.get("cluster", [])]
    if starts:
        print(f"cluster start-up (not in its wall time): {statistics.median(starts):.1f} s")


if __name__ == "__main__":
    main()
