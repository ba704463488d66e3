"""How long a transfer takes on a device's link, and whether it breaks."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from fl_iot.fleet.conditions import LinkConditions, Spread


class Transfer(NamedTuple):
    """One transfer: its simulated duration and whether it broke (the bytes never arrived)."""

    seconds: float
    broke: bool


def draw(spread: Spread, rng: np.random.Generator) -> float:
    """One draw of a log-normal spread (its median when ``sigma`` is 0)."""
    if spread.sigma == 0:
        return float(spread.median)
    return float(spread.median * math.exp(spread.sigma * rng.standard_normal()))


def transfer(
    num_bytes: int, link: LinkConditions | None, uplink: bool, rng: np.random.Generator
) -> Transfer:
    """Time to move ``num_bytes`` over ``link`` (up or down); ``None`` is an instant link.

    A median bandwidth of 0 means an unlimited link (only latency counts).
    """
    if link is None:
        return Transfer(0.0, False)
    kbps = draw(link.uplink_kbps if uplink else link.downlink_kbps, rng)
    latency_s = draw(link.latency_ms, rng) / 1000.0
    seconds = latency_s + (8.0 * num_bytes / (kbps * 1000.0) if kbps > 0 else 0.0)
    broke = bool(link.break_probability > 0 and rng.random() < link.break_probability)
    return Transfer(seconds, broke)
