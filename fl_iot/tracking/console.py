"""Live progress on the console: one line per round."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flwr.app import ArrayRecord

from fl_iot.records import RoundRecord, RunStatus, RunSummary
from fl_iot.tracking.base import RunInfo, Sink

log = logging.getLogger("fl_iot.progress")


class ConsoleSink(Sink):
    """Logs the run's shape at start, a line per round, and the outcome at the end."""

    def start(self, info: RunInfo) -> None:  # noqa: D102
        scenario = info.config["scenario"]
        log.info(
            "scenario %s: %d devices %s, %d rounds, dataset %s%s, model %d parameters, strategy %s",
            scenario["name"],
            info.federation["num_devices"],
            info.federation["device_classes"],
            scenario["num_rounds"],
            info.dataset["name"],
            " (synthetic)" if info.dataset["synthetic"] else "",
            info.model_parameters,
            info.config["strategy"].get("_target_", "?").rsplit(".", 1)[-1]
            + (
                " over gateways (gateways.mode=aggregate: sampling, rejection and reliability "
                "per gateway)"
                if (info.config.get("gateways") or {}).get("mode") == "aggregate"
                else ""
            ),
        )
        log.info("writing results to %s", info.output_dir)

    def resume(self, info: RunInfo, records: Sequence[RoundRecord]) -> None:  # noqa: D102
        self.start(info)
        done = records[-1].round if records else 0
        log.info("resuming after round %d of %d", done, info.config["scenario"]["num_rounds"])

    def log_round(self, record: RoundRecord) -> None:  # noqa: D102
        log.info(format_round(record))

    def finish(self, summary: RunSummary, arrays: ArrayRecord | None) -> None:  # noqa: D102
        central = summary.final.central
        if summary.status == RunStatus.COMPLETED:
            log.info(
                "done in %.1f s: central accuracy %s, macro-F1 %s",
                summary.timings.get("server_total_s", 0.0),
                _fmt(central.get("accuracy")),
                _fmt(central.get("macro_f1")),
            )
        else:
            log.error("run %s: %s", summary.status, summary.error)


def _duration(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 05 s`` or ``12.3 s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"


def format_round(record: RoundRecord) -> str:
    """One progress line, e.g. ``[round 3/10] central acc 0.912 f1 0.713 loss 0.310 | ...``."""
    parts = [f"[round {record.round}/{record.num_rounds}]"]
    for label, metrics in (("central", record.central), ("federated", record.federated)):
        if metrics:
            parts.append(
                f"{label} acc {_fmt(metrics.get('accuracy'))} f1 {_fmt(metrics.get('macro_f1'))} "
                f"loss {_fmt(metrics.get('loss'))}"
            )
    clients = f"clients {record.replied}/{record.sampled} replied"
    if record.failed:
        clients += f", {record.failed} failed"
    if record.declined:
        clients += f", {record.declined} declined"
    if record.missing:
        clients += f", {record.missing} missing"
    if record.detection:
        clients += f", rejected {int(record.detection['rejected'])}"
    for outcome in ("offline", "late"):
        if record.fleet.get(outcome):
            clients += f", {int(record.fleet[outcome])} {outcome}"
    parts.append("| " + clients)
    if record.fleet.get("clock_s"):  # a simulated fleet: its clock at the round's close
        parts.append(f"| simulated {_duration(record.fleet['clock_s'])}")
    up, down = (record.communication.get(f"message_bytes_{d}", 0.0) for d in ("up", "down"))
    if up or down:
        parts.append(f"| up {_bytes(up)} down {_bytes(down)}")
    if "epsilon-max" in record.privacy:
        parts.append(f"| local epsilon max {_fmt(record.privacy['epsilon-max'])}")
    if "central-epsilon" in record.privacy:
        parts.append(f"| central epsilon {_fmt(record.privacy['central-epsilon'])}")
    parts.append(f"| {record.elapsed_s:.1f} s")
    if record.errors:
        parts.append(f"| errors: {'; '.join(record.errors)}")
    return " ".join(parts)


def _bytes(count: float) -> str:
    """``812 B``, ``41.2 KiB`` or ``3.10 MiB``."""
    if count < 1024:
        return f"{count:.0f} B"
    if count < 1024**2:
        return f"{count / 1024:.1f} KiB"
    return f"{count / 1024**2:.2f} MiB"


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"
