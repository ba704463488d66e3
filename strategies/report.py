"""Round reports: what a strategy did in one round, as a typed record.

``strategy.round_report(server_round)`` returns a :class:`RoundReport`; the fl-iot round loop
writes its :meth:`~RoundReport.to_dict` to ``metrics.jsonl`` and W&B::

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
any, under ``"unknown_nodes": {"<node id>": reason}``. The fields of a device's entry are
:class:`DeviceReport`'s.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


def number(value: Any) -> float | None:
    """``float(value)``, or ``None`` for ``None``, NaN and Inf."""
    if value is None:
        return None
    result = float(value)
    return result if math.isfinite(result) else None


@dataclass
class DeviceReport:
    """What a strategy did with one device's reply in one round.

    ``status`` is ``"accepted"`` or the kind of rejection (:class:`~strategies.RejectionKind`).
    ``weight`` is the device's share of the aggregate (the shares sum to 1); ``quantity``,
    ``quality`` and ``reliability`` are the factors of the unnormalised weight, and
    ``norm_clip`` the factor its update was shrunk by (1: not clipped) before averaging;
    ``mean_direction_z`` is the decayed mean direction that quality comes from, and ``signals``
    the anomaly signals of :data:`strategies.SIGNALS`. A value that does not apply is ``None``;
    NaN never appears.
    """

    status: str
    num_examples: float | None = None
    weight: float | None = None
    quantity: float | None = None
    mean_direction_z: float | None = None
    quality: float | None = None
    reliability: float | None = None
    norm_clip: float | None = None
    anomaly_score: float | None = None
    signals: dict[str, float | None] | None = None


DEVICE_KEYS = tuple(f.name for f in fields(DeviceReport))
"""Keys of every per-device entry, in every strategy's report."""


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
) -> DeviceReport:
    """A :class:`DeviceReport` from numbers of any kind: numpy scalars and NaN/Inf made safe.

    Field by field (:func:`number`): a round report of a thousand devices is assembled every
    round, and generic recursion over it was its largest cost.
    """
    return DeviceReport(
        status=status,
        num_examples=number(num_examples),
        weight=number(weight),
        quantity=number(quantity),
        mean_direction_z=number(mean_direction_z),
        quality=number(quality),
        reliability=number(reliability),
        norm_clip=number(norm_clip),
        anomaly_score=number(anomaly_score),
        signals=None if signals is None else {k: number(v) for k, v in signals.items()},
    )


@dataclass
class RoundReport:
    """What a strategy did in one round (the layout above).

    ``num_replies``, ``num_accepted`` and ``late`` are ``None`` for a round the strategy did not
    aggregate; ``error`` says why aggregation failed; ``inner`` holds what a wrapped strategy
    reported beyond devices and rejections; ``sections`` what a wrapper adds under its own key
    (central DP's ``central_dp``).
    """

    strategy: str
    round: int
    rejected: dict[str, str] = field(default_factory=dict)
    devices: dict[str, DeviceReport] = field(default_factory=dict)
    num_replies: int | None = None
    num_accepted: int | None = None
    late: list[str] | None = None
    error: str | None = None
    unknown_nodes: dict[str, str] = field(default_factory=dict)
    inner: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable dict; fields that do not apply are left out."""
        out: dict[str, Any] = {"strategy": self.strategy, "round": self.round}
        if self.num_replies is not None:
            out["num_replies"] = self.num_replies
        if self.num_accepted is not None:
            out["num_accepted"] = self.num_accepted
        out["rejected"] = dict(self.rejected)
        if self.late is not None:
            out["late"] = list(self.late)
        out["devices"] = {device: asdict(entry) for device, entry in self.devices.items()}
        if self.error is not None:
            out["error"] = self.error
        if self.unknown_nodes:
            out["unknown_nodes"] = dict(self.unknown_nodes)
        if self.inner:
            out["inner"] = dict(self.inner)
        out.update(self.sections)
        return out

    @classmethod
    def from_dict(cls, report: dict[str, Any]) -> RoundReport:
        """The report a dict in this layout describes (a third-party strategy's).

        Keys that are no field go to ``sections``.
        """
        known = {f.name for f in fields(cls)} - {"sections", "devices"}
        devices = {
            str(device): DeviceReport(**{k: entry.get(k) for k in DEVICE_KEYS})
            for device, entry in (report.get("devices") or {}).items()
        }
        return cls(
            **{k: v for k, v in report.items() if k in known},
            devices=devices,
            sections={k: v for k, v in report.items() if k not in known | {"devices"}},
        )


def merge_reports(outer: RoundReport, inner: RoundReport) -> RoundReport:
    """Merge a wrapped strategy's report into its wrapper's.

    ``rejected``, ``late`` and ``unknown_nodes`` are unions; per-device entries take the
    wrapper's values and fill the ones it left ``None`` from the wrapped strategy (the wrapper
    knows anomaly scores, the weighting strategy knows weights). What else the wrapped strategy
    reported is kept under ``inner``.
    """
    devices = {device: replace(entry) for device, entry in inner.devices.items()}
    for device, entry in outer.devices.items():
        base = devices.get(device)
        if base is None:
            devices[device] = replace(entry)
            continue
        for key in DEVICE_KEYS:
            value = getattr(entry, key)
            if value is not None:
                setattr(base, key, value)
    # What the merge leaves out: the inner report's top-level fields (devices are not serialised).
    merged_keys = {"rejected", "late", "devices", "round", "unknown_nodes"}
    top = replace(inner, devices={}).to_dict()
    extra = {k: v for k, v in top.items() if k not in merged_keys}
    return replace(
        outer,
        rejected={**inner.rejected, **outer.rejected},
        late=sorted(set(outer.late or []) | set(inner.late or []), key=device_order),
        unknown_nodes={**inner.unknown_nodes, **outer.unknown_nodes},
        devices=dict(sorted(devices.items(), key=lambda item: device_order(item[0]))),
        inner=extra or outer.inner,
    )


def device_order(device: str) -> tuple[int, int | str]:
    """Sort key for device keys: numeric ids numerically, anything else after them."""
    try:
        return (0, int(device))
    except ValueError:
        return (1, device)
