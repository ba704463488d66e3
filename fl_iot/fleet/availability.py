"""When each device is online: sessions from a daily pattern with churn, or from a trace.

A :class:`Timeline` is a device's sorted, disjoint online sessions ``[start, end)`` in simulated
seconds. Generated timelines are built lazily, one day at a time, from a generator of their own
(seeded by the run's seed and the device id), so a device's sessions never depend on how far
other devices' timelines were read, nor on how often the loop asked.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np

from fl_iot.fleet.conditions import AvailabilityConditions

DAY_S = 86_400.0
HORIZON_DAYS = 3_650
"""Generated timelines end after ten simulated years (a run that long is a bug, not a study)."""


class Timeline:
    """A device's online sessions, generated on demand or given whole (a trace)."""

    def __init__(
        self,
        sessions: Sequence[tuple[float, float]] = (),
        *,
        conditions: AvailabilityConditions | None = None,
        rng: np.random.Generator | None = None,
        start_hour: float = 0.0,
    ) -> None:
        merged = _merge(sorted(sessions))
        self._starts = [s for s, _ in merged]
        self._ends = [e for _, e in merged]
        self._conditions = conditions
        self._rng = rng
        self._start_hour = start_hour
        self._days = -1  # the next day to generate (day -1: windows that run past midnight)
        self._offset_h = 0.0
        self._online_carry: bool | None = None
        if conditions is not None:
            assert rng is not None, "a generated timeline needs its generator"
            self._offset_h = float(rng.uniform(-conditions.jitter_h, conditions.jitter_h))

    @classmethod
    def always_online(cls) -> Timeline:
        """Online from the start, for ever."""
        return cls([(0.0, math.inf)])

    def online_at(self, t: float) -> bool:
        """Whether the device is online at ``t``."""
        return self.session_end(t) is not None

    def session_end(self, t: float) -> float | None:
        """When the session holding ``t`` ends; ``None`` when offline at ``t``."""
        self._extend_to(t)
        i = bisect.bisect_right(self._starts, t) - 1
        if i >= 0 and t < self._ends[i]:
            return self._ends[i]
        return None

    def next_online(self, t: float) -> float | None:
        """The first time ``>= t`` the device is online; ``None`` if never again."""
        if self.online_at(t):
            return t
        while True:
            i = bisect.bisect_right(self._starts, t)
            if i < len(self._starts):
                return self._starts[i]
            if not self._can_extend():
                return None
            self._generate_day()

    def charged_since(self, t: float, recharge_gap_s: float) -> float | None:
        """When the device last came back from an offline gap of at least ``recharge_gap_s``.

        The start of the run counts as such a return. ``None`` when offline at ``t``.
        """
        self._extend_to(t)
        i = bisect.bisect_right(self._starts, t) - 1
        if i < 0 or t >= self._ends[i]:
            return None
        while i > 0 and self._starts[i] - self._ends[i - 1] < recharge_gap_s:
            i -= 1
        return self._starts[i]

    def sessions_until(self, t: float) -> list[tuple[float, float]]:
        """Every session that starts before ``t`` (for writing traces)."""
        self._extend_to(t)
        return [(s, e) for s, e in zip(self._starts, self._ends, strict=True) if s < t]

    # -- generation --------------------------------------------------------------------------

    def _can_extend(self) -> bool:
        return self._conditions is not None and self._days < HORIZON_DAYS

    def _extend_to(self, t: float) -> None:
        while self._can_extend() and self._days * DAY_S <= t + DAY_S:
            self._generate_day()

    def _generate_day(self) -> None:
        """Append the sessions of the next day: its windows, cut by churn."""
        assert self._conditions is not None and self._rng is not None
        c, rng = self._conditions, self._rng
        day_start = self._days * DAY_S - self._start_hour * 3600.0
        self._days += 1
        for window in sorted(c.online_hours):
            begin = day_start + (window[0] + self._offset_h) * 3600.0
            end = day_start + (window[1] + self._offset_h) * 3600.0
            for session in _churn(max(begin, 0.0), end, c.mean_online_s, c.mean_offline_s, rng):
                self._append(session)

    def _append(self, session: tuple[float, float]) -> None:
        start, end = session
        if end <= start:
            return
        if self._ends and start <= self._ends[-1]:  # touches the previous session: one session
            self._ends[-1] = max(self._ends[-1], end)
            return
        self._starts.append(start)
        self._ends.append(end)


def _churn(
    begin: float, end: float, mean_on: float, mean_off: float, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Online sessions within ``[begin, end)`` under exponential on/off churn."""
    if end <= begin:
        return []
    if mean_off <= 0:
        return [(begin, end)]
    sessions = []
    t = begin
    online = bool(rng.random() < mean_on / (mean_on + mean_off))  # the stationary state
    while t < end:
        length = float(rng.exponential(mean_on if online else mean_off))
        if online:
            sessions.append((t, min(t + length, end)))
        t += length
        online = not online
    return sessions


def _merge(sessions: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sessions:
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
