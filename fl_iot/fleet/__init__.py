"""Fleets that behave like real ones, on a simulated clock (the ``fleet`` config group).

:mod:`~fl_iot.fleet.conditions` is the schema (per device class: availability, battery, link,
failures), :mod:`~fl_iot.fleet.availability` the online sessions, :mod:`~fl_iot.fleet.links` the
transfers, :mod:`~fl_iot.fleet.simulator` the verdicts the round loop asks for, and
:mod:`~fl_iot.fleet.trace` the CSV format of availability traces and their generator.
"""

from fl_iot.fleet.availability import Timeline
from fl_iot.fleet.build import build_fleet, fleet_config
from fl_iot.fleet.conditions import (
    AvailabilityConditions,
    BatteryConditions,
    DeviceConditions,
    FleetConfig,
    LinkConditions,
    Spread,
)
from fl_iot.fleet.simulator import (
    Arrival,
    DeviceOutcome,
    Dispatch,
    FleetDevice,
    FleetSimulator,
    ideal_fleet,
)
from fl_iot.fleet.trace import read_trace, write_trace

__all__ = [
    "Arrival",
    "AvailabilityConditions",
    "BatteryConditions",
    "DeviceConditions",
    "DeviceOutcome",
    "Dispatch",
    "FleetConfig",
    "FleetDevice",
    "FleetSimulator",
    "LinkConditions",
    "Spread",
    "Timeline",
    "build_fleet",
    "fleet_config",
    "ideal_fleet",
    "read_trace",
    "write_trace",
]
