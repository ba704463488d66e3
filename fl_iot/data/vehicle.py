"""SYNTHETIC vehicle-fleet telemetry: which fault, if any, a vehicle shows in a minute of driving.

This dataset is generated, not recorded (``synthetic=True``). It stands in for the CAN-bus
telemetry of a fleet, whose real data are proprietary, and keeps the properties that make fleet
learning hard: every vehicle and every driver is different, sensors are noisy, biased and drift,
vehicles report very different amounts of data, and faults are rare and often mild.

One sample is a window of ``window`` (64) seconds at 1 Hz of six channels, shaped
``(6, window)``: speed (km/h), engine speed (rpm), coolant temperature (°C), battery voltage (V),
longitudinal acceleration (m/s²) and brake pressure (bar). Classes: the vehicle's health state
during the window.

normal
    The thermostat holds the coolant at the vehicle's set point (86-96 °C); the alternator holds
    the battery at the vehicle's charging voltage (13.8-14.5 V) above idle.
coolant-fault
    Weak cooling: the coolant settles 4-18 °C above the set point (with the fault's severity),
    heats faster under load and fluctuates.
battery-fault
    A failing battery or alternator: lower charging and resting voltage, sag under electrical
    load, and ripple.
brake-wear
    Worn pads: the driver needs up to twice the brake pressure for the same deceleration, and
    the pads judder (acceleration vibration while braking).

Generation (all draws from one generator seeded with ``seed``, so a seed fixes the dataset):

Vehicles
    Mass (acceleration capability), gearing and idle speed (rpm), thermostat set point, cooling
    capacity, resting and charging voltage, brake efficiency (±10 %), and per channel a sensor
    noise level (0.5-2x the nominal), a calibration bias and a drift rate. The bias grows linearly
    with the window's time in the vehicle's observation period (``drift`` scales it), so late and
    early windows of one vehicle differ. Each vehicle has its own class mix, drawn from
    Dirichlet(4 * (0.55, 0.15, 0.15, 0.15)): some vehicles are mostly healthy, some fault-prone.
Drivers
    A pool of ``num_vehicles // 2`` drivers (at least 2); each vehicle is shared by 1-3 of them.
    A driver has a cruising speed and an aggressiveness that scales throttle and braking.
Windows
    A window starts at a random speed; the driver steers towards a target speed with an AR(1)
    throttle and brake process; speed, rpm, temperature and voltage follow from the vehicle's
    physics and the fault (a severity drawn uniformly in [0.15, 1] per faulty window), then each
    channel gets the vehicle's noise, bias and drift.
Sample counts
    Vehicle ``v`` has ``max(10, round(LogNormal(log(samples_per_vehicle), size_sigma)))``
    windows: a few vehicles report a lot, many report little.
Central test split
    ``test_fraction`` of every vehicle's windows, generated in the same way in the same draw
    (the windows are independent given the vehicle, so these are fresh minutes of the same fleet
    at random times); no device holds them.
Normalisation
    Each channel is standardised with the mean and standard deviation of the training windows.
One device per vehicle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.data import LabeledData
from fl_iot.data.base import DATASETS, RawData, SourceDataset
from fl_iot.errors import ConfigError

CHANNELS = ("speed", "rpm", "coolant_temp", "battery_voltage", "accel_long", "brake_pressure")
CLASS_NAMES = ("normal", "coolant-fault", "battery-fault", "brake-wear")
_CLASS_PRIOR = np.asarray([0.55, 0.15, 0.15, 0.15])
_MIN_SAMPLES = 10
# Nominal sensor noise, calibration bias and drift (standard deviations), per channel, in units.
_NOISE = np.asarray([0.5, 30.0, 0.3, 0.05, 0.15, 0.5])
_BIAS = np.asarray([1.0, 50.0, 1.5, 0.10, 0.10, 1.0])
_DRIFT = np.asarray([1.0, 40.0, 2.0, 0.15, 0.10, 1.0])


@dataclass(frozen=True)
class _Fleet:
    """Per-vehicle parameters, one entry per vehicle."""

    mass: np.ndarray
    gearing: np.ndarray
    idle_rpm: np.ndarray
    setpoint: np.ndarray
    cooling: np.ndarray
    rest_voltage: np.ndarray
    charge_voltage: np.ndarray
    brake_efficiency: np.ndarray
    noise: np.ndarray  # (vehicles, channels)
    bias: np.ndarray
    drift: np.ndarray
    class_mix: np.ndarray  # (vehicles, classes)
    drivers: tuple[np.ndarray, ...]  # indices into the driver pool


def _draw_fleet(
    rng: np.random.Generator, vehicles: int, drivers: int, noise: float, drift: float
) -> _Fleet:
    channels = len(CHANNELS)
    return _Fleet(
        mass=rng.uniform(0.8, 1.3, vehicles),
        gearing=rng.uniform(90.0, 120.0, vehicles),
        idle_rpm=rng.uniform(700.0, 900.0, vehicles),
        setpoint=rng.uniform(86.0, 96.0, vehicles),
        cooling=rng.uniform(0.8, 1.2, vehicles),
        rest_voltage=rng.uniform(12.4, 12.8, vehicles),
        charge_voltage=rng.uniform(13.8, 14.5, vehicles),
        brake_efficiency=rng.uniform(0.9, 1.1, vehicles),
        noise=noise * _NOISE * rng.uniform(0.5, 2.0, (vehicles, channels)),
        bias=_BIAS * rng.normal(0.0, 1.0, (vehicles, channels)),
        drift=drift * _DRIFT * rng.normal(0.0, 1.0, (vehicles, channels)),
        class_mix=rng.dirichlet(4.0 * _CLASS_PRIOR, vehicles),
        drivers=tuple(
            rng.choice(drivers, size=int(rng.integers(1, min(3, drivers) + 1)), replace=False)
            for _ in range(vehicles)
        ),
    )


def _simulate(
    rng: np.random.Generator,
    fleet: _Fleet,
    vehicle: np.ndarray,
    labels: np.ndarray,
    cruise: np.ndarray,
    aggressiveness: np.ndarray,
    length: int,
) -> np.ndarray:
    """Return clean-physics-plus-sensor-error windows ``(n, channels, length)``.

    ``vehicle`` and ``labels`` give each window's vehicle and class; ``cruise`` and
    ``aggressiveness`` are the parameters of each window's driver.
    """
    n = len(vehicle)
    severity = np.where(labels > 0, rng.uniform(0.15, 1.0, n), 0.0)
    coolant = np.where(labels == 1, severity, 0.0)
    battery = np.where(labels == 2, severity, 0.0)
    brakes = np.where(labels == 3, severity, 0.0)
    when = rng.uniform(0.0, 1.0, n)  # position of the window in the observation period

    max_accel = 2.5 * aggressiveness / fleet.mass[vehicle]
    target = cruise * rng.uniform(0.3, 1.2, n)
    speed = target * rng.uniform(0.0, 1.2, n)
    shock = np.zeros(n)
    wear = 1.0 - 0.5 * brakes  # pressure needed grows as 1 / wear
    temp = fleet.setpoint[vehicle] + 4.0 * coolant + 14.0 * coolant**2 + rng.normal(0.0, 1.0, n)
    out = np.empty((n, len(CHANNELS), length))
    for t in range(length):
        # The driver changes the target speed now and then (traffic, lights).
        change = rng.uniform(size=n) < 0.04
        target = np.where(change, cruise * rng.uniform(0.0, 1.2, n), target)
        shock = 0.85 * shock + rng.normal(0.0, 0.35 * aggressiveness, n)
        command = np.clip(0.08 * (target - speed) + shock, -1.6 * max_accel, max_accel)
        braking = np.clip(-command, 0.0, None)
        pressure = 10.0 * braking / (fleet.brake_efficiency[vehicle] * wear)
        judder = braking * brakes * rng.normal(0.0, 1.0, n)
        accel = np.where(speed > 0.5, command, np.clip(command, 0.0, None)) + judder
        speed = np.clip(speed + 3.6 * accel, 0.0, 180.0)
        gear = np.clip(1 + speed // 20, 1, 6)
        load = np.clip(accel, 0.0, None) / max_accel
        rpm = fleet.idle_rpm[vehicle] + fleet.gearing[vehicle] * speed / gear + 400.0 * load
        # Coolant: relax towards the set point plus load heating; a weak circuit heats up more
        # and fluctuates.
        equilibrium = fleet.setpoint[vehicle] + 4.0 * coolant + 14.0 * coolant**2 + 3.0 * load
        temp = temp + (equilibrium - temp) / (20.0 * fleet.cooling[vehicle])
        temp = temp + load * (0.05 + 0.3 * coolant) + coolant * rng.normal(0.0, 0.25, n)
        charging = rpm > 1000.0
        voltage = np.where(
            charging,
            fleet.charge_voltage[vehicle] - 0.9 * battery,
            fleet.rest_voltage[vehicle] + 0.5 - 0.7 * battery,
        )
        electrical = 0.2 * load + 0.1 * (braking > 0)  # lights, fans, brake lights
        voltage = voltage - electrical * (1.0 + 4.0 * battery)
        voltage = voltage + battery * rng.normal(0.0, 0.15, n)
        out[:, :, t] = np.stack([speed, rpm, temp, voltage, accel, pressure], axis=1)
    error = fleet.bias[vehicle] + fleet.drift[vehicle] * when[:, None]
    out += error[:, :, None]
    out += fleet.noise[vehicle][:, :, None] * rng.normal(0.0, 1.0, out.shape)
    return out


@DATASETS.decorator("vehicle")
def load_vehicle(
    root: Path | None = None,
    seed: int = 0,
    num_vehicles: int = 40,
    samples_per_vehicle: int = 150,
    size_sigma: float = 0.8,
    window: int = 64,
    noise: float = 1.0,
    drift: float = 1.0,
    test_fraction: float = 0.2,
) -> SourceDataset:
    """Generate SYNTHETIC fleet telemetry windows shaped ``(6, window)``, one device per vehicle.

    Parameters
    ----------
    root : Path or None
        Ignored: the data are generated.
    seed : int
        Fixes every random draw: the same seed gives the same dataset.
    num_vehicles : int
        Vehicles (devices) in the fleet.
    samples_per_vehicle : int
        Median number of windows per vehicle (the counts are lognormal).
    size_sigma : float
        Standard deviation of the log of the window counts (0 gives equal counts).
    window : int
        Seconds (samples at 1 Hz) per window.
    noise : float
        Scale of every vehicle's sensor noise (1 is nominal).
    drift : float
        Scale of every vehicle's sensor drift over the observation period (1 is nominal).
    test_fraction : float
        Fraction of each vehicle's windows held out for the central test split.

    Raises
    ------
    ConfigError
        For a count below its minimum, a negative scale or a fraction outside (0, 1).
    """
    del root  # generated data need no files
    for name, value, low in (
        ("num_vehicles", num_vehicles, 1),
        ("samples_per_vehicle", samples_per_vehicle, _MIN_SAMPLES),
        ("window", window, 8),
    ):
        if int(value) != value or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, scale in (("size_sigma", size_sigma), ("noise", noise), ("drift", drift)):
        if not scale >= 0.0:
            raise ConfigError(f"{name} must be >= 0, got {scale!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}")

    rng = np.random.default_rng(seed)
    num_drivers = max(2, num_vehicles // 2)
    cruise = rng.uniform(40.0, 110.0, num_drivers)
    aggressiveness = rng.uniform(0.5, 1.5, num_drivers)
    fleet = _draw_fleet(rng, num_vehicles, num_drivers, noise, drift)
    counts = np.maximum(
        _MIN_SAMPLES,
        np.round(rng.lognormal(math.log(samples_per_vehicle), size_sigma, num_vehicles)),
    ).astype(np.int64)
    vehicle = np.repeat(np.arange(num_vehicles), counts)
    labels = np.concatenate(
        [rng.choice(len(CLASS_NAMES), c, p=fleet.class_mix[v]) for v, c in enumerate(counts)]
    )
    driver = np.concatenate([rng.choice(fleet.drivers[v], c) for v, c in enumerate(counts)])
    x = _simulate(rng, fleet, vehicle, labels, cruise[driver], aggressiveness[driver], window)

    # The first windows of each vehicle are its training windows: they are independent draws, so
    # this is a random split.
    position = np.arange(len(vehicle)) - np.repeat(np.cumsum(counts) - counts, counts)
    held_out = position >= np.repeat(counts - np.round(test_fraction * counts), counts)
    mean = x[~held_out].mean(axis=(0, 2), keepdims=True)
    std = x[~held_out].std(axis=(0, 2), keepdims=True)
    x = ((x - mean) / std).astype(np.float32)
    return SourceDataset(
        name="vehicle",
        train=LabeledData(x[~held_out], labels[~held_out].astype(np.int64)),
        groups=np.asarray([f"vehicle-{v:03d}" for v in vehicle[~held_out]]),
        test=LabeledData(x[held_out], labels[held_out].astype(np.int64)),
        class_names=CLASS_NAMES,
        synthetic=True,
        description=(
            "SYNTHETIC vehicle-fleet telemetry (generated, not recorded): 6-channel windows, "
            "health state, one device per vehicle"
        ),
        metadata={"channels": list(CHANNELS), "windows_per_vehicle": counts.tolist()},
        raw=RawData(
            # Independent windows (no overlap) of the channels at 1 Hz, 16-bit CAN signals (EST).
            bytes_per_example=len(CHANNELS) * window * 2,
            bytes_per_second=len(CHANNELS) * 2,
            basis=f"{len(CHANNELS)} channels at 1 Hz, 16 bits each (EST); {window} s a window",
        ),
    )
