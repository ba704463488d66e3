"""Framework overhead: the same workload through fl-iot, a plain Flower app and a pure loop.

Three variants do the same work (data, model, devices, rounds, local training, federated and
central evaluation; see ``overhead_workload.py``):

``fl-iot``
    The real ``fl-iot`` command with the scenario's defaults and all default sinks (console,
    jsonl, summary, plot, checkpoint), writing to a temporary ``hydra.run.dir``.
``plain-flower``
    ``plain_flower_app.py``: a Flower ``ServerApp`` running ``FedAvg.start`` and a decorator
    ``ClientApp``, through ``flwr.simulation.run_simulation`` with fl-iot's ``backend_config``.
``pure``
    ``pure_loop.py``: one process, no framework, devices trained in turn (the lower bound).

Each variant runs as a whole process (interpreter start to exit, ``subprocess`` timed by the
parent). Every repetition runs all three, in an order that rotates between repetitions
(``--order rotate``; ``fixed`` keeps fl-iot, plain Flower, pure), and the ratios are taken within
a repetition, then summarised as median (min-max). While a variant runs, a sampler thread walks
the process and all its descendants (Ray's GCS, raylet, dashboard, workers and actors) every
``--interval`` seconds and sums their RSS, and every ``--pss-every`` samples sums their PSS
(``memory_full_info().pss``, which reads ``smaps`` and costs tens of ms per process); it also
records the 1-minute load average. The phases of every run come from the children's own
timestamps (``@@bench`` lines of the plain variants; fl-iot's ``cli.log`` round lines and
``summary.json`` timings).

Run::

    .venv/bin/python benchmarks/bench_overhead.py                       # default scenario, 3 reps
    .venv/bin/python benchmarks/bench_overhead.py --workload small --reps 5
    .venv/bin/python benchmarks/bench_overhead.py --workload default small --json out.json

The default scenario takes several minutes per repetition on a 2-core machine; run it with
``nohup`` and read the log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO))

from overhead_workload import (  # noqa: E402
    BENCH_ENV,
    MARK_PREFIX,
    Workload,
    workload_from_config,
    workload_of,
)

VARIANTS = ("fl-iot", "plain-flower", "pure")
RATIOS = (("fl-iot", "plain-flower"), ("plain-flower", "pure"), ("fl-iot", "pure"))
GOAL_FL_IOT_OVER_FLOWER = 1.15
MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# Memory and load sampling


@dataclass
class TreeSample:
    """Peaks of one process tree, and the load average seen while it ran."""

    peak_rss_mib: float = 0.0
    peak_rss_procs: int = 0
    peak_pss_mib: float = 0.0
    peak_pss_procs: int = 0
    pss_samples: int = 0
    rss_samples: int = 0
    max_procs: int = 0
    load: list[float] = field(default_factory=list)


class TreeSampler(threading.Thread):
    """Sample the RSS (and, less often, PSS) summed over a process and all its descendants."""

    def __init__(self, pid: int, interval_s: float, pss_every: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.pss_every = max(1, pss_every)
        self.result = TreeSample()
        self._stop_event = threading.Event()

    def stop(self) -> TreeSample:
        """Stop sampling and return the peaks."""
        self._stop_event.set()
        self.join()
        return self.result

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []

    def run(self) -> None:  # noqa: D102
        tick = 0
        while not self._stop_event.is_set():
            procs = self._tree()
            if procs:
                self._sample(procs, with_pss=tick % self.pss_every == 0)
            self.result.load.append(os.getloadavg()[0])
            tick += 1
            self._stop_event.wait(self.interval_s)

    def _sample(self, procs: list[psutil.Process], with_pss: bool) -> None:
        rss = pss = 0
        counted = 0
        for proc in procs:
            try:
                if with_pss:
                    info = proc.memory_full_info()
                    rss += info.rss
                    pss += info.pss
                else:
                    rss += proc.memory_info().rss
                counted += 1
            except psutil.Error:
                continue
        r = self.result
        r.rss_samples += 1
        r.max_procs = max(r.max_procs, counted)
        if rss / MIB > r.peak_rss_mib:
            r.peak_rss_mib, r.peak_rss_procs = rss / MIB, counted
        if with_pss:
            r.pss_samples += 1
            if pss / MIB > r.peak_pss_mib:
                r.peak_pss_mib, r.peak_pss_procs = pss / MIB, counted


# --------------------------------------------------------------------------------------------
# One timed run


@dataclass
class RunRecord:
    """One whole-process run of one variant.

    Phases (seconds): ``startup`` is process start to the server's main (fl-iot: its
    ``run_server``; plain Flower: ``@app.main()``; pure: the loop's start); ``first`` is from
    there to the end of round 1 (Ray start, actors, fl-iot's roll call, initial central
    evaluation, round 1); ``steady`` is the mean of rounds 2..R; ``tail`` is the end of the
    last round to process exit (sinks' finish, Ray shutdown, interpreter exit).
    """

    workload: str
    variant: str
    rep: int
    returncode: int
    wall_s: float
    startup_s: float | None = None
    first_s: float | None = None
    steady_s: float | None = None
    tail_s: float | None = None
    memory: TreeSample = field(default_factory=TreeSample)
    marks: dict[str, float] = field(default_factory=dict)
    sampled_train: list[int] = field(default_factory=list)
    final_central: dict[str, float] = field(default_factory=dict)
    fliot_timings: dict[str, float] = field(default_factory=dict)
    log: str = ""
    git_head: str = ""
    drift: list[str] = field(default_factory=list)

    @property
    def load_median(self) -> float:
        """Median 1-minute load average during the run."""
        return statistics.median(self.memory.load) if self.memory.load else float("nan")


def child_env(variant: str) -> dict[str, str]:
    """The environment of a timed child: offline Flower/W&B; benchmarks/ importable."""
    env = {**os.environ, **BENCH_ENV}
    if variant != "fl-iot":
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p
        )
    return env


def command(variant: str, workload: Workload, workload_file: Path, run_dir: Path) -> list[str]:
    """The command line of one variant."""
    python = sys.executable
    if variant == "fl-iot":
        fl_iot = Path(python).with_name("fl-iot")
        return [str(fl_iot), f"hydra.run.dir={run_dir}", *workload.overrides]
    script = "plain_flower_app.py" if variant == "plain-flower" else "pure_loop.py"
    return [python, str(BENCH_DIR / script), "--workload", str(workload_file)]


def run_once(
    variant: str,
    workload: Workload,
    workload_file: Path,
    work_dir: Path,
    rep: int,
    interval_s: float,
    pss_every: int,
    timeout_s: float,
) -> RunRecord:
    """Run one variant as a whole process, sampling its process tree; parse its phases."""
    run_dir = work_dir / f"{workload.name}-{variant}-rep{rep}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "stdout.log"
    cmd = command(variant, workload, workload_file, run_dir)
    returncode, wall_s, memory, popen_t = run_sampled(
        cmd, log_path, child_env(variant), interval_s, pss_every, timeout_s
    )
    record = RunRecord(workload.name, variant, rep, returncode, wall_s, memory=memory)
    record.log = str(log_path)
    record.git_head = _git("rev-parse", "--short", "HEAD")
    marks = _child_marks(log_path, record)
    if variant == "fl-iot":
        marks = _fliot_marks(run_dir, workload.num_rounds, record)
        record.drift = _fliot_drift(run_dir, workload)
    _phases(record, marks, popen_t, workload.num_rounds)
    return record


def run_sampled(
    cmd: list[str],
    log_path: Path,
    env: dict[str, str],
    interval_s: float,
    pss_every: int,
    timeout_s: float,
) -> tuple[int, float, TreeSample, float]:
    """Run ``cmd`` from the repository, sampling its process tree; output to ``log_path``.

    Returns the exit status (-9 after a timeout, the tree killed), the wall time, the memory
    peaks and the epoch time just before the process started.
    """
    with open(log_path, "w", encoding="utf-8") as log:
        popen_t = time.time()
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        sampler = TreeSampler(proc.pid, interval_s, pss_every)
        sampler.start()
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            returncode = -9
        wall_s = time.perf_counter() - started
        memory = sampler.stop()
    return returncode, wall_s, memory, popen_t


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill a timed-out child and its descendants (only processes this benchmark started)."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()
    proc.wait()


def _child_marks(log_path: Path, record: RunRecord) -> dict[str, float]:
    """Read the ``@@bench`` events of a plain variant's stdout."""
    marks: dict[str, float] = {}
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith(MARK_PREFIX):
            continue
        event = json.loads(line[len(MARK_PREFIX) :])
        name = event["event"]
        if name == "round_end":
            marks[f"round_{event['round']}"] = event["t"]
        elif name == "result":
            record.sampled_train = list(event.get("sampled_train", []))
            record.final_central = dict(event.get("final_central", {}))
        else:
            marks[name] = event["t"]
    return marks


def _fliot_marks(run_dir: Path, num_rounds: int, record: RunRecord) -> dict[str, float]:
    """fl-iot's phases from its ``cli.log`` round lines and ``summary.json`` timings."""
    marks: dict[str, float] = {}
    for log_file in run_dir.glob("*.log"):
        if log_file.name == "stdout.log":
            continue
        for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
            if "] - [round " not in line:
                continue
            stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            round_number = int(line.split("] - [round ", 1)[1].split("/", 1)[0])
            marks[f"round_{round_number}"] = stamp
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        timings = summary.get("timings", {})
        record.fliot_timings = {k: float(v) for k, v in timings.items() if v is not None}
        record.final_central = dict(summary.get("final", {}).get("central", {}))
        record.sampled_train = [int(summary.get("clients", {}).get("sampled", 0))]
        last = marks.get(f"round_{num_rounds}")
        if last is not None and "server_total_s" in record.fliot_timings:
            # server_total_s runs from run_server's start to the end of the last round, whose
            # progress line the console sink logs at that moment.
            marks["main"] = last - record.fliot_timings["server_total_s"]
    return marks


def _fliot_drift(run_dir: Path, workload: Workload) -> list[str]:
    """Workload fields of fl-iot's run (its ``summary.json`` config) that differ from ``workload``.

    The config is composed from the working tree at each run; if someone edits ``conf/`` during
    the benchmark, the fl-iot run no longer does the plain variants' work and is excluded.
    """
    from omegaconf import OmegaConf

    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        return []
    config = json.loads(summary_path.read_text(encoding="utf-8")).get("config", {})
    try:
        ran = workload_of(workload.name, workload.overrides, OmegaConf.create(config))
    except (ValueError, KeyError, AttributeError) as error:
        return [f"config not comparable: {error}"]
    return workload.differences(ran)


def _phases(record: RunRecord, marks: dict[str, float], popen_t: float, num_rounds: int) -> None:
    record.marks = {k: round(v - popen_t, 3) for k, v in marks.items()}
    main, first = marks.get("main"), marks.get("round_1")
    last = marks.get(f"round_{num_rounds}")
    if main is not None:
        record.startup_s = main - popen_t
    if main is not None and first is not None:
        record.first_s = first - main
    if first is not None and last is not None and num_rounds > 1:
        record.steady_s = (last - first) / (num_rounds - 1)
    if last is not None:
        record.tail_s = popen_t + record.wall_s - last


# --------------------------------------------------------------------------------------------
# Summaries


def spread(values: Sequence[float | None], digits: int = 2) -> str:
    """``median (min-max)`` of the values that are present, or ``-``."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    fmt = f"{{:.{digits}f}}"
    med = fmt.format(statistics.median(present))
    if len(present) == 1:
        return med
    return f"{med} ({fmt.format(min(present))}–{fmt.format(max(present))})"


def per_rep_ratio(
    records: list[RunRecord], num: str, den: str, value: Callable[[RunRecord], float | None]
) -> list[float]:
    """``value(num) / value(den)`` within each repetition where both runs succeeded."""
    by_rep: dict[int, dict[str, RunRecord]] = {}
    for r in records:
        if r.returncode == 0 and not r.drift:
            by_rep.setdefault(r.rep, {})[r.variant] = r
    ratios = []
    for runs in by_rep.values():
        if num in runs and den in runs:
            a, b = value(runs[num]), value(runs[den])
            if a is not None and b:
                ratios.append(a / b)
    return ratios


def markdown_report(workload: Workload, records: list[RunRecord]) -> str:
    """The markdown tables of one workload."""
    ok = [r for r in records if r.returncode == 0 and not r.drift]
    failed = [r for r in records if r.returncode != 0]
    drifted = [r for r in records if r.drift]
    reps = sorted({r.rep for r in records})
    lines = [
        f"### Workload `{workload.name}`",
        "",
        f"{workload.describe()}",
        "",
        f"{len(reps)} repetitions; every figure is median (min–max) over them.",
        "",
        "| variant | whole process s | start → server main s | main → end of round 1 s | "
        "steady round s (2..R) | last round → exit s | peak tree RSS MiB | "
        "peak tree PSS MiB | processes | 1-min load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        runs = [r for r in ok if r.variant == variant]
        if not runs:
            continue
        lines.append(
            f"| {variant} | {spread([r.wall_s for r in runs], 1)} "
            f"| {spread([r.startup_s for r in runs])} | {spread([r.first_s for r in runs])} "
            f"| {spread([r.steady_s for r in runs])} | {spread([r.tail_s for r in runs])} "
            f"| {spread([r.memory.peak_rss_mib for r in runs], 0)} "
            f"| {spread([r.memory.peak_pss_mib for r in runs], 0)} "
            f"| {spread([float(r.memory.max_procs) for r in runs], 0)} "
            f"| {spread([r.load_median for r in runs], 1)} |"
        )
    lines += [
        "",
        "| ratio (paired per repetition) | whole process | start → end of round 1 | "
        "steady round | peak tree PSS |",
        "|---|---|---|---|---|",
    ]
    for num, den in RATIOS:
        whole = per_rep_ratio(ok, num, den, lambda r: r.wall_s)
        to_first = per_rep_ratio(
            ok,
            num,
            den,
            lambda r: None if r.startup_s is None or r.first_s is None else r.startup_s + r.first_s,
        )
        steady = per_rep_ratio(ok, num, den, lambda r: r.steady_s)
        pss = per_rep_ratio(ok, num, den, lambda r: r.memory.peak_pss_mib or None)
        goal = ""
        if (num, den) == ("fl-iot", "plain-flower") and whole:
            verdict = "meets" if statistics.median(whole) <= GOAL_FL_IOT_OVER_FLOWER else "misses"
            goal = f" — {verdict} the ≤ {GOAL_FL_IOT_OVER_FLOWER}× goal"
        lines.append(
            f"| {num} / {den} | **{spread(whole)}**{goal} | {spread(to_first)} "
            f"| {spread(steady)} | {spread(pss)} |"
        )
    fliot = [r for r in ok if r.variant == "fl-iot" and r.fliot_timings]
    if fliot:
        lines += [
            "",
            "fl-iot's own `summary.json` timings (`setup_s`: `run_server` start to the end of the "
            "roll call, which includes Ray start-up and the actors; `rounds_s`: all rounds; "
            "outside = whole process − `server_total_s`: interpreter, imports, Hydra, "
            "validation, driver data load, sinks' finish, Ray teardown, exit):",
            "",
            "| setup_s | rounds_s | mean_round_s | server_total_s | outside the ServerApp s |",
            "|---|---|---|---|---|",
            f"| {spread([r.fliot_timings.get('setup_s') for r in fliot])} "
            f"| {spread([r.fliot_timings.get('rounds_s') for r in fliot])} "
            f"| {spread([r.fliot_timings.get('mean_round_s') for r in fliot])} "
            f"| {spread([r.fliot_timings.get('server_total_s') for r in fliot])} "
            f"| {spread([r.wall_s - r.fliot_timings.get('server_total_s', 0.0) for r in fliot])} |",
        ]
    lines += [
        "",
        "Per run:",
        "",
        "| rep | variant | whole s | devices trained | final central acc | load | git HEAD |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r.rep, r.variant)):
        acc = r.final_central.get("accuracy")
        lines.append(
            f"| {r.rep} | {r.variant}{'' if r.returncode == 0 else f' (rc {r.returncode})'} "
            f"| {r.wall_s:.1f} | {sum(r.sampled_train)} "
            f"| {'-' if acc is None else f'{acc:.3f}'} | {r.load_median:.1f} | {r.git_head} |"
        )
    if failed:
        lines += ["", "Failed runs (excluded): " + ", ".join(f"{r.log}" for r in failed)]
    if drifted:
        lines += [
            "",
            "Runs whose config drifted from the workload (conf/ edited during the benchmark; "
            "excluded): "
            + "; ".join(f"rep {r.rep} {r.variant}: {', '.join(r.drift)}" for r in drifted),
        ]
    return "\n".join(lines)


def _git(*args: str) -> str:
    """Output of a read-only git command in the repository ('' if git is unavailable)."""
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return ""


def provenance() -> dict[str, Any]:
    """Where and on what the benchmark ran."""
    from importlib import metadata

    versions = {}
    for name in ("flwr", "torch", "ray", "hydra-core", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "git_head": _git("rev-parse", "--short", "HEAD"),
        "git_dirty_paths": len(_git("status", "--porcelain").splitlines()),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "versions": versions,
    }


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--workload",
        nargs="+",
        choices=("default", "small"),
        default=["default"],
        help="default: the scenario as shipped; small: --small-devices / --small-rounds",
    )
    parser.add_argument("--scenario", default=None, help="Hydra scenario override (FedAvg only)")
    parser.add_argument("--small-devices", type=int, default=10)
    parser.add_argument("--small-rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3, help="repetitions (>= 1; 3+ advised)")
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="what to run"
    )
    parser.add_argument("--order", choices=("rotate", "fixed"), default="rotate")
    parser.add_argument("--interval", type=float, default=0.5, help="RSS sampling period, s")
    parser.add_argument("--pss-every", type=int, default=10, help="PSS every N RSS samples")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per run, s")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--report-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="print the tables of an earlier run's results JSON and exit (runs nothing)",
    )
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    return args


def report_from(path: Path) -> None:
    """Print the markdown tables of a results JSON written by an earlier run."""
    results = json.loads(path.read_text(encoding="utf-8"))
    print(f"provenance: {json.dumps(results.get('provenance', {}))}")
    for entry in results["workloads"].values():
        workload = Workload.from_json(json.dumps(entry["workload"]))
        records = [
            RunRecord(**{**run, "memory": TreeSample(**run["memory"])}) for run in entry["runs"]
        ]
        print("\n" + markdown_report(workload, records))
    if "load_summary" in results:
        print("\n" + results["load_summary"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the markdown report; return 0 if every run succeeded."""
    args = parse_args(argv)
    if args.report_from is not None:
        report_from(args.report_from)
        return 0
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    info = provenance()
    print(f"# Framework overhead ({datetime.now():%Y-%m-%d %H:%M})", flush=True)
    print(f"work dir (logs, fl-iot outputs): {work_dir}", flush=True)
    print(f"provenance: {json.dumps(info)}", flush=True)
    load_before = os.getloadavg()
    all_results: dict[str, Any] = {"provenance": info, "load_before": load_before, "workloads": {}}
    reports: list[str] = []
    all_ok = True
    for name in args.workload:
        overrides = [f"scenario={args.scenario}"] if args.scenario else []
        if name == "small":
            overrides += [
                f"scenario.num_devices={args.small_devices}",
                f"scenario.num_rounds={args.small_rounds}",
            ]
        workload = workload_from_config(name, overrides)
        workload_file = work_dir / f"workload-{name}.json"
        workload_file.write_text(workload.to_json(), encoding="utf-8")
        print(f"\nworkload {workload.describe()}", flush=True)
        records: list[RunRecord] = []
        for rep in range(args.reps):
            order = list(args.variants)
            if args.order == "rotate":
                shift = rep % len(order)
                order = order[shift:] + order[:shift]
            for variant in order:
                record = run_once(
                    variant,
                    workload,
                    workload_file,
                    work_dir,
                    rep,
                    args.interval,
                    args.pss_every,
                    args.timeout,
                )
                records.append(record)
                all_ok &= record.returncode == 0 and not record.drift
                print(
                    f"  rep {rep} {variant:>12}: rc {record.returncode} "
                    f"{'DRIFT ' + ','.join(record.drift) + ' ' if record.drift else ''}"
                    f"{record.wall_s:7.1f} s, peak RSS {record.memory.peak_rss_mib:6.0f} MiB, "
                    f"PSS {record.memory.peak_pss_mib:6.0f} MiB, load {record.load_median:.1f}",
                    flush=True,
                )
        report = markdown_report(workload, records)
        reports.append(report)
        print("\n" + report, flush=True)
        all_results["workloads"][name] = {
            "workload": json.loads(workload.to_json()),
            "description": workload.describe(),
            "runs": [asdict(r) for r in records],
        }
    all_results["load_after"] = os.getloadavg()
    loads = [
        x for w in all_results["workloads"].values() for r in w["runs"] for x in r["memory"]["load"]
    ]
    if loads:
        summary = (
            f"1-min load average during the runs: median {statistics.median(loads):.1f}, "
            f"min {min(loads):.1f}, max {max(loads):.1f} (on {os.cpu_count()} CPUs)"
        )
        print("\n" + summary, flush=True)
        all_results["load_summary"] = summary
    print(
        f"Memory: RSS summed over the tree every {args.interval:g} s; PSS (smaps) every "
        f"{args.pss_every} samples, i.e. every {args.interval * args.pss_every:g} s, so a short "
        "PSS peak can be missed; RSS counts shared pages in every process and overstates.",
        flush=True,
    )
    json_path = args.json or work_dir / "results.json"
    json_path.write_text(json.dumps(all_results, indent=2, default=str), encoding="utf-8")
    print(f"results: {json_path}", flush=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
