"""Round reports: what a strategy did in one round, as a JSON-serialisable dict.

The fl-iot round loop calls ``strategy.round_report(server_round)`` after ``aggregate_train`` and
writes the dict to ``metrics.jsonl`` and W&B. Every strategy here uses the same layout::

    {
      "strategy": "AnomalyRejection(ReliabilityWeightedFedAvg)",
      "round": 3,
      "num_replies": 50, "num_accepted": 40,
      "rejected": {"17": "update norm too large (robust z 9.1 > 4)", ...},
      "late": ["23"],
      "devices": {
        "17": {"status": "anomalous", "num_examples": 120.0, "weight": 0.0,
               "quantity": None, "quality": None, "reliability": 0.41, "norm_clip": None,
               "anomaly_score": 2.3, "signals": {"norm_z": 9.1, ...}},
        ...
      }
    }

``rejected`` is exactly the set of devices whose reply was excluded from aggregation this round
(error replies included, with their reason), so precision/recall against the true attackers can be
computed from it. Devices are keyed by the roster, never by what a reply claims (a reply that
claims another device is rejected under its own: ``"spoof: claims device 3, the roster says
17"``); replies from nodes outside the roster are no device's and appear, only when there are
any, under ``"unknown_nodes": {"<node id>": reason}``.

``weight`` is the device's share of the aggregate (the shares sum to 1); ``quantity``,
``quality`` and ``reliability`` are the factors of the unnormalised weight, and ``norm_clip`` the
factor its update was shrunk by (1: not clipped) before averaging. A value that does not apply
is ``None``; NaN never appears.
"""

from __future__ import annotations

import math
from typing import Any

DEVICE_KEYS = (
    "status",
    "num_examples",
    "weight",
    "quantity",
    "mean_direction_z",
    "quality",
    "reliability",
    "norm_clip",
    "anomaly_score",
    "signals",
)
"""Keys of every per-device entry, in every strategy's report."""


def clean(value: Any) -> Any:
    """A JSON-safe version of ``value``: NaN/Inf become ``None``, numpy scalars plain Python."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return None
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return int(value)
    return number


def number(value: Any) -> float | None:
    """``float(value)``, or ``None`` for ``None``, NaN and Inf."""
    if value is None:
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def device_entry(
    status: str,
    *,
    num_examples: Any = None,
    weight: Any = None,
    quantity: Any = None,
    mean_direction_z: Any = None,
    quality: Any = None,
    reliability: Any = None,
    norm_clip: Any = None,
    anomaly_score: Any = None,
    signals: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A per-device entry with every key of :data:`DEVICE_KEYS`, JSON-safe.

    Built field by field rather than through :func:`clean`: a round report of a thousand
    devices is assembled every round, and generic recursion was its largest cost.
    """
    return {
        "status": status,
        "num_examples": number(num_examples),
        "weight": number(weight),
        "quantity": number(quantity),
        "mean_direction_z": number(mean_direction_z),
        "quality": number(quality),
        "reliability": number(reliability),
        "norm_clip": number(norm_clip),
        "anomaly_score": number(anomaly_score),
        "signals": None if signals is None else {k: number(v) for k, v in signals.items()},
    }


def merge_reports(outer: dict[str, Any], inner: dict[str, Any]) -> dict[str, Any]:
    """Merge a wrapped strategy's report into its wrapper's.

    ``rejected`` is the union; per-device entries take the wrapper's values and fill the ones it
    left ``None`` from the wrapped strategy (the wrapper knows anomaly scores, the weighting
    strategy knows weights). Other top-level keys of the wrapped report are kept under ``inner``.
    """
    merged = dict(outer)
    merged["rejected"] = {**inner.get("rejected", {}), **outer.get("rejected", {})}
    merged["late"] = sorted(
        set(outer.get("late", [])) | set(inner.get("late", [])), key=device_order
    )
    unknown = {**inner.get("unknown_nodes", {}), **outer.get("unknown_nodes", {})}
    if unknown:
        merged["unknown_nodes"] = unknown
    devices = {k: dict(v) for k, v in inner.get("devices", {}).items()}
    for device, entry in outer.get("devices", {}).items():
        base = devices.setdefault(device, {key: None for key in DEVICE_KEYS})
        for key, value in entry.items():
            if value is not None or key not in base:
                base[key] = value
    merged["devices"] = dict(sorted(devices.items(), key=lambda item: device_order(item[0])))
    merged_keys = {"rejected", "late", "devices", "round", "unknown_nodes"}
    extra = {k: v for k, v in inner.items() if k not in merged_keys}
    if extra:
        merged["inner"] = extra
    return merged


def device_order(device: str) -> tuple[int, int | str]:
    """Sort key for device keys: numeric ids numerically, anything else after them."""
    try:
        return (0, int(device))
    except ValueError:
        return (1, device)
