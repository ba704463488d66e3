"""The end-of-run summary (:class:`~fl_iot.records.RunSummary`) built from the round records."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from fl_iot.records import (
    TRAFFIC_KEYS,
    ClientCounts,
    FinalMetrics,
    RoundRecord,
    RunStatus,
    RunSummary,
)
from fl_iot.tracking.base import RunInfo, jsonable

VERSIONED_PACKAGES = (
    "fl-iot",
    "flwr",
    "flwr-datasets",
    "torch",
    "opacus",
    "dp-accounting",
    "hydra-core",
    "omegaconf",
    "numpy",
    "ray",
    "wandb",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide a run's numbers."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def summarize(
    info: RunInfo,
    records: list[RoundRecord],
    status: RunStatus,
    error: str,
    timings: dict[str, float],
    initial_central: dict[str, float],
) -> RunSummary:
    """The run's summary, from its description and its round records."""
    last = records[-1] if records else None
    round_times = [r.round_time_s for r in records]
    final = FinalMetrics()
    if last is not None:
        final = FinalMetrics(
            jsonable(last.central),
            jsonable(last.federated),
            jsonable(last.train),
            jsonable(last.by_class),
        )
    return RunSummary(
        status=status,
        error=error,
        scenario=info.config.get("scenario", {}).get("name"),
        strategy=info.config.get("strategy", {}).get("_target_"),
        seed=info.config.get("seed"),
        rounds_completed=len(records),
        final=final,
        best_central=jsonable(_best(records, "central")),
        initial_central=jsonable(initial_central),
        detection=jsonable(_mean_detection(records)),
        privacy=jsonable(_privacy(records)),
        clients=ClientCounts(
            sampled=sum(r.sampled for r in records),
            replied=sum(r.replied for r in records),
            failed=sum(r.failed for r in records),
            declined=sum(r.declined for r in records),
            missing=sum(r.missing for r in records),
        ),
        communication=jsonable(communication_summary(records, info.raw_data)),
        timings=jsonable(
            {
                **timings,
                "mean_round_s": sum(round_times) / len(round_times) if round_times else None,
            }
        ),
        errors=[f"round {r.round}: {e}" for r in records for e in r.errors],
        dataset=jsonable(info.dataset),
        federation=jsonable(info.federation),
        model_parameters=info.model_parameters,
        versions=info.versions,
        config=jsonable(info.config),
    )


def communication_summary(
    records: list[RoundRecord], raw_data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The run's traffic: totals, per device class, against uncompressed and raw data.

    Training's payload and message bytes, and federated evaluation's messages
    (``eval_message_bytes_up``/``_down``) apart.

    Summed from the devices' per-round byte counts (see :class:`~fl_iot.records.RoundRecord`).
    ``uncompressed_message_bytes_up``/``_down`` are what the messages would have weighed
    carrying whole models (computed, not measured by a second run), and
    ``uplink_payload_reduction`` is ``1 - payload_bytes_up / uncompressed_payload_bytes_up``
    (``downlink_payload_reduction`` likewise). ``raw_data`` is the baseline of
    shipping the training data instead (:func:`fl_iot.server.raw_data_baseline`), with
    ``stream_bytes_per_round``: what the fleet's sensors produce in a round's mean simulated
    duration (``None`` when the fleet's clock does not move, ``fleet=ideal``), and
    ``uplink_bytes_per_round``, the measured federated uplink per round, beside it.
    """
    by_class: dict[str, dict[str, float]] = {}
    for record in records:
        for entry in record.devices.values():
            if not any(key in entry for key in TRAFFIC_KEYS):
                continue
            sums = by_class.setdefault(
                str(entry.get("device_class", "?")), dict.fromkeys(TRAFFIC_KEYS, 0.0)
            )
            for key in TRAFFIC_KEYS:
                sums[key] += float(entry.get(key, 0.0))
    for sums in by_class.values():
        _derived(sums)
    total = {key: sum(c[key] for c in by_class.values()) for key in TRAFFIC_KEYS}
    _derived(total)
    if not by_class:
        return {}
    summary: dict[str, Any] = {**total, "by_class": by_class}
    if raw_data:
        durations = [r.fleet.get("round_duration_s", 0.0) for r in records]
        mean_s = sum(durations) / len(durations) if durations else 0.0
        summary["raw_data"] = {
            **raw_data,
            "stream_bytes_per_round": (
                raw_data["bytes_per_second_per_device"] * raw_data["devices"] * mean_s
                if mean_s > 0
                else None
            ),
            "uplink_bytes_per_round": total["message_bytes_up"] / len(records),
        }
    return summary


def _derived(sums: dict[str, float]) -> None:
    for direction, name in (("up", "uplink"), ("down", "downlink")):
        overhead = sums[f"message_bytes_{direction}"] - sums[f"payload_bytes_{direction}"]
        full = sums[f"uncompressed_payload_bytes_{direction}"]
        sums[f"uncompressed_message_bytes_{direction}"] = overhead + full
        reduction = 1.0 - sums[f"payload_bytes_{direction}"] / full if full else 0.0
        sums[f"{name}_payload_reduction"] = reduction


def _best(records: list[RoundRecord], part: str) -> dict[str, float]:
    scored = [r for r in records if getattr(r, part).get("macro_f1") is not None]
    if not scored:
        return {}
    best = max(scored, key=lambda r: getattr(r, part)["macro_f1"])
    return {"round": best.round, **getattr(best, part)}


def _privacy(records: list[RoundRecord]) -> dict[str, float]:
    """The fleet's worst local epsilon over the run, and the central epsilon at its end."""
    local = [r.privacy for r in records if "epsilon-max" in r.privacy]
    central = [r.privacy for r in records if "central-epsilon" in r.privacy]
    summary: dict[str, float] = {}
    if local:
        summary.update(
            {
                "epsilon-max": max(p["epsilon-max"] for p in local),
                "delta-max": max(p["delta-max"] for p in local),
                "budget-exhausted-devices-last-round": local[-1]["budget-exhausted-devices"],
            }
        )
    if central:
        summary.update({k: v for k, v in central[-1].items() if k.startswith("central-")})
    return summary


def _mean_detection(records: list[RoundRecord]) -> dict[str, float]:
    """Precision and recall of rejection over the whole run (micro-averaged over rounds).

    Where the strategy reports weights, also the attackers' mean share of the aggregate per round.
    """
    rounds = [r.detection for r in records if r.detection]
    if not rounds:
        return {}
    caught = sum(d["caught"] for d in rounds)
    rejected = sum(d["rejected"] for d in rounds)
    attackers = sum(d["attackers"] for d in rounds)
    result = {
        "precision": caught / rejected if rejected else 1.0,
        "recall": caught / attackers if attackers else 1.0,
        "rejected": rejected,
        "attackers": attackers,
    }
    weights = [d["attacker_weight"] for d in rounds if "attacker_weight" in d]
    if weights:
        result["attacker_weight"] = sum(weights) / len(weights)
    return result
