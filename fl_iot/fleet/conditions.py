"""What a fleet's devices live with, per device class: availability, battery, link, failures.

These dataclasses are the schema of the ``fleet`` config group (``conf/fleet/*.yaml``): each
option names, per device class, the conditions of that class. A class without an entry, and
every class under ``fleet=ideal``, is *ideal*: always online, on a free and instant link, training
in no simulated time, never failing, which is exactly how fl-iot behaved before fleets existed.

Times are simulated seconds from the start of the run; hours of the day are local hours, the run
starting at ``FleetConfig.start_hour``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Spread:
    """A positive quantity drawn per event from a log-normal: ``median · exp(sigma · N(0, 1))``.

    ``sigma = 0`` makes it the constant ``median``. Throughput and latency of real links are
    right-skewed (a few transfers are very slow), which the log-normal reproduces.
    """

    median: float = 0.0
    sigma: float = 0.0


@dataclass
class LinkConditions:
    """A device class's network link, drawn anew for every transfer.

    A transfer of ``b`` bytes takes ``latency + 8 b / bandwidth``; it breaks (the bytes never
    arrive, the device is not heard from again that round) with ``break_probability``.
    ``sources`` names where the nominal figures come from.
    """

    uplink_kbps: Spread = field(default_factory=Spread)
    downlink_kbps: Spread = field(default_factory=Spread)
    latency_ms: Spread = field(default_factory=Spread)
    break_probability: float = 0.0
    sources: list[str] = field(default_factory=list)


@dataclass
class AvailabilityConditions:
    """When a device of the class is online.

    A daily pattern (``online_hours``: ``[start, end)`` windows in local hours, ``end`` may pass
    24; each device shifted by its own offset, uniform in ``±jitter_h``), and within the windows
    random churn: online and offline sessions of exponential length with the given means
    (``mean_offline_s = 0``: no churn). A wearable is offline while it charges at night, a car
    while it is parked, a phone in a dead zone.
    """

    # [[start, end], ...]; typed Any because OmegaConf refuses ints in a list[list[float]].
    online_hours: list[Any] = field(default_factory=lambda: [[0.0, 24.0]])
    jitter_h: float = 0.0
    mean_online_s: float = 3600.0
    mean_offline_s: float = 0.0
    sources: list[str] = field(default_factory=list)


@dataclass
class BatteryConditions:
    """A battery-powered class: a device below ``min_level`` declines to train.

    The battery is full again at the start of each daily window (it charged while offline),
    less a random shortfall up to ``max_start_shortfall``; it drains by ``drain_per_hour`` while
    online and by ``drain_per_training`` for each local training.
    """

    min_level: float = 0.2
    drain_per_hour: float = 0.03
    drain_per_training: float = 0.01
    max_start_shortfall: float = 0.3


@dataclass
class DeviceConditions:
    """Everything the fleet simulates for one device class.

    ``mid_training_failure`` is the probability that a device goes offline at a random point of
    its local training (besides the end of its online session falling inside the training).
    ``battery`` is ``None`` for mains-powered classes, ``link`` ``None`` for an instant link.
    """

    availability: AvailabilityConditions | None = None
    link: LinkConditions | None = None
    battery: BatteryConditions | None = None
    mid_training_failure: float = 0.0


@dataclass
class FleetConfig:
    """The ``fleet`` config group: device conditions per class, or a replayed trace.

    ``step_time_s`` is the simulated time of one optimiser step on a device of
    ``relative_speed = 1``: a class's training takes ``steps · step_time_s / relative_speed``.
    ``trace``, when set, is a CSV availability trace (:mod:`fl_iot.fleet.trace`) that replaces
    every class's ``availability``. ``failure_rate`` makes that share of the dispatched devices
    fail at random mid-training in every round, on top of the classes' own conditions (the
    dropout benchmark sets it). ``flaky_fraction`` of the devices (chosen by the seed) are flaky:
    they also fail mid-training in ``flaky_failure_rate`` of their rounds.
    """

    name: str = "ideal"
    step_time_s: float = 0.0
    start_hour: float = 8.0
    trace: str | None = None
    failure_rate: float = 0.0
    flaky_fraction: float = 0.0
    flaky_failure_rate: float = 0.5
    classes: dict[str, DeviceConditions] = field(default_factory=dict)

    @property
    def ideal(self) -> bool:
        """Whether nothing is simulated: every device always online, instant and reliable."""
        return (
            self.step_time_s == 0.0
            and self.trace is None
            and self.failure_rate == 0.0
            and self.flaky_fraction == 0.0
            and all(c == DeviceConditions() for c in self.classes.values())
        )
