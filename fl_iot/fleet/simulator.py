"""The fleet on a simulated clock: who is online, how long each exchange takes, who fails.

The round loop asks :class:`FleetSimulator` two things per device and round: when it sends the
device its train message (:meth:`~FleetSimulator.dispatch`: is the device online, charged, does
the download arrive, will it stay online through its training) and when the reply reaches the
server (:meth:`~FleetSimulator.arrive`: the upload of the reply's measured bytes). A reply's
simulated arrival is ``download + compute + upload``, each transfer including its latency, with
the transfer sizes measured on the messages themselves.

Every draw comes from a generator seeded by ``(seed, device, round, phase)``, so a device's fate
in a round does not depend on which other devices were asked, nor in which order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np

from fl_iot.fleet.availability import Timeline
from fl_iot.fleet.conditions import DeviceConditions, FleetConfig
from fl_iot.fleet.links import transfer

RECHARGE_GAP_S = 3 * 3600.0
"""An offline gap this long (a night on the charger, a parked car) recharges a battery."""

_AVAILABILITY, _DISPATCH, _ARRIVAL, _BATTERY, _FLAKY = 1, 2, 3, 4, 5


class DeviceOutcome(StrEnum):
    """How a device's part in a round ended, as the round record logs it."""

    ON_TIME = "on_time"
    """Its update reached the server before the round closed."""
    LATE = "late"
    """Its update arrived after the round closed (dropped, or used in a later round)."""
    FAILED = "failed"
    """It received the model but was not heard from again (a broken transfer, offline
    mid-training), or replied with an error."""
    DECLINED = "declined"
    """It refused to train (battery below its level, privacy budget spent)."""
    OFFLINE = "offline"
    """It was selected while offline: nothing was sent."""


@dataclass(frozen=True)
class FleetDevice:
    """What the simulator needs to know of one device."""

    device_class: str
    conditions: DeviceConditions
    planned_steps: int
    relative_speed: float


@dataclass(frozen=True)
class Dispatch:
    """The fleet's verdict on sending a train message to a device at ``sent_s``.

    ``outcome`` is set when the device will not train (offline, declined, the download broke);
    ``cutoff_steps`` when it goes offline after that many of its local steps (it keeps the
    partial update). ``quiet_s`` is when the device went quiet (it will not reply).
    """

    device: int
    sent_s: float
    download_bytes: int
    download_s: float
    compute_s: float
    outcome: DeviceOutcome | None = None
    reason: str = ""
    cutoff_steps: int | None = None
    quiet_s: float | None = None

    @property
    def trains(self) -> bool:
        """Whether the message reaches the device and it starts training."""
        return self.outcome is None


@dataclass(frozen=True)
class Arrival:
    """When a device's reply reaches the server, or why it never does."""

    device: int
    outcome: DeviceOutcome  # ON_TIME (arrived; the loop decides late) or FAILED
    upload_bytes: int
    upload_s: float
    arrival_s: float
    reason: str = ""


@dataclass
class FleetSimulator:
    """Availability, battery, links, compute and failures of every device of a run."""

    config: FleetConfig
    devices: Mapping[int, FleetDevice]
    seed: int
    trace: Mapping[int, list[tuple[float, float]]] | None = None
    flaky: frozenset[int] = field(default=frozenset(), init=False)
    _timelines: dict[int, Timeline] = field(default_factory=dict, init=False, repr=False)
    # When each device started a training: what drains its battery, and all the state a
    # simulator gathers (its timelines are regenerated from the seed), so a resumed run keeps it.
    training_starts: dict[int, list[float]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        devices = sorted(self.devices)
        count = round(self.config.flaky_fraction * len(devices))
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _FLAKY]))
        self.flaky = frozenset(int(d) for d in rng.permutation(devices)[:count])

    def timeline(self, device: int) -> Timeline:
        """The device's online sessions (built on first use)."""
        timeline = self._timelines.get(device)
        if timeline is None:
            timeline = self._build_timeline(device)
            self._timelines[device] = timeline
        return timeline

    def online(self, device: int, t: float) -> bool:
        """Whether ``device`` is online at ``t``."""
        return self.timeline(device).online_at(t)

    def next_online(self, devices: Iterable[int], t: float) -> float | None:
        """The earliest time ``> t`` at which one of the offline ``devices`` comes online."""
        times = [
            n
            for d in devices
            if not self.online(d, t) and (n := self.timeline(d).next_online(t)) is not None
        ]
        return min(times) if times else None

    def battery_level(self, device: int, t: float) -> float | None:
        """The device's battery level in ``[0, 1]`` at ``t``; ``None`` without a battery."""
        battery = self.devices[device].conditions.battery
        if battery is None:
            return None
        charged = self.timeline(device).charged_since(t, RECHARGE_GAP_S)
        if charged is None:
            return None
        rng = _rng(self.seed, device, int(charged), _BATTERY)
        level = 1.0 - float(rng.uniform(0.0, battery.max_start_shortfall))
        level -= battery.drain_per_hour * (t - charged) / 3600.0
        level -= battery.drain_per_training * sum(
            1 for s in self.training_starts.get(device, []) if charged <= s < t
        )
        return max(0.0, level)

    def dispatch(self, device: int, server_round: int, t: float, download_bytes: int) -> Dispatch:
        """Send ``download_bytes`` to ``device`` at ``t``: what happens until its training ends."""
        spec = self.devices[device]
        conditions = spec.conditions
        step_s = self.config.step_time_s / spec.relative_speed
        compute_s = spec.planned_steps * step_s
        base = Dispatch(device, t, download_bytes, 0.0, compute_s)
        session_end = self.timeline(device).session_end(t)
        if session_end is None:
            return _with(base, outcome=DeviceOutcome.OFFLINE, reason="offline")
        level = self.battery_level(device, t)
        assert conditions.battery is None or level is not None
        if (
            conditions.battery is not None
            and level is not None
            and level < conditions.battery.min_level
        ):
            return _with(
                base,
                outcome=DeviceOutcome.DECLINED,
                reason=f"battery {level:.0%} below {conditions.battery.min_level:.0%}",
            )
        rng = _rng(self.seed, device, server_round, _DISPATCH)
        down = transfer(download_bytes, conditions.link, uplink=False, rng=rng)
        flaky_p = self.config.flaky_failure_rate if device in self.flaky else 0.0
        fail_p = 1.0 - (1.0 - conditions.mid_training_failure) * (
            1.0 - self.config.failure_rate
        ) * (1.0 - flaky_p)
        fails_at = float(rng.random()) if rng.random() < fail_p else None
        base = _with(base, download_s=down.seconds)
        if down.broke or t + down.seconds > session_end:
            why = "the download broke" if down.broke else "went offline during the download"
            return _with(base, outcome=DeviceOutcome.FAILED, reason=why, quiet_s=t + down.seconds)
        self.training_starts.setdefault(device, []).append(t)
        cutoff: int | None = None
        reason = ""
        if fails_at is not None:
            cutoff, reason = int(fails_at * spec.planned_steps), "failed mid-training"
        if step_s > 0 and t + down.seconds + compute_s > session_end:
            steps_left = int((session_end - t - down.seconds) // step_s)
            if cutoff is None or steps_left < cutoff:
                cutoff, reason = steps_left, "went offline mid-training"
        if cutoff is None:
            return base
        return _with(
            base,
            cutoff_steps=cutoff,
            reason=reason,
            quiet_s=t + down.seconds + cutoff * step_s,
        )

    def arrive(self, dispatch: Dispatch, server_round: int, upload_bytes: int) -> Arrival:
        """The upload of a reply of ``upload_bytes`` after ``dispatch``'s training."""
        device = dispatch.device
        rng = _rng(self.seed, device, server_round, _ARRIVAL)
        up = transfer(upload_bytes, self.devices[device].conditions.link, uplink=True, rng=rng)
        done = dispatch.sent_s + dispatch.download_s + dispatch.compute_s
        arrival = done + up.seconds
        session_end = self.timeline(device).session_end(dispatch.sent_s) or dispatch.sent_s
        if up.broke or arrival > session_end:
            why = "the upload broke" if up.broke else "went offline during the upload"
            return Arrival(device, DeviceOutcome.FAILED, upload_bytes, up.seconds, arrival, why)
        return Arrival(device, DeviceOutcome.ON_TIME, upload_bytes, up.seconds, arrival)

    def _build_timeline(self, device: int) -> Timeline:
        if self.trace is not None:
            return Timeline(self.trace.get(device, []))
        availability = self.devices[device].conditions.availability
        if availability is None:
            return Timeline.always_online()
        return Timeline(
            conditions=availability,
            rng=_rng(self.seed, device, 0, _AVAILABILITY),
            start_hour=self.config.start_hour,
        )


def ideal_fleet(devices: Iterable[int]) -> FleetSimulator:
    """A fleet in which every device is always online, instant and reliable."""
    ideal = FleetDevice("", DeviceConditions(), 0, 1.0)
    return FleetSimulator(FleetConfig(), {d: ideal for d in devices}, seed=0)


def _rng(seed: int, device: int, server_round: int, phase: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, device, server_round, phase]))


def _with(dispatch: Dispatch, **changes: object) -> Dispatch:
    return replace(dispatch, **changes)  # type: ignore[arg-type]
