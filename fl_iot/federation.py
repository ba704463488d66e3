"""The population of devices in a run: identity, device class and role.

A device is not a Flower node. Device ``i`` holds data partition ``i``; today each device runs on
its own node, and the server learns which node is which device by a roll call. Keeping the two apart
lets a gateway node serve many devices later without touching strategies or reports.

The federation is a pure function of the config and the seed, so the ServerApp and every ClientApp
derive the same one without exchanging it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fl_iot.errors import ConfigError


@dataclass(frozen=True)
class Device:
    """One IoT device of the fleet."""

    device_id: int
    natural_key: str
    device_class: str
    attacker: bool = False


@dataclass(frozen=True)
class Federation:
    """All devices of a run, indexed by device id."""

    devices: tuple[Device, ...]

    def __len__(self) -> int:
        return len(self.devices)

    def __getitem__(self, device_id: int) -> Device:
        return self.devices[device_id]

    @property
    def attackers(self) -> frozenset[int]:
        """Ids of the devices that run the configured attack."""
        return frozenset(d.device_id for d in self.devices if d.attacker)

    def class_counts(self) -> dict[str, int]:
        """Number of devices per device class."""
        counts: dict[str, int] = {}
        for device in self.devices:
            counts[device.device_class] = counts.get(device.device_class, 0) + 1
        return counts


def build_federation(
    natural_keys: Sequence[str],
    device_mix: Mapping[str, float],
    attacker_fraction: float,
    seed: int,
) -> Federation:
    """Assign a device class and a role to every device.

    Parameters
    ----------
    natural_keys : sequence of str
        Natural key of each device's partition, in device-id order.
    device_mix : mapping of str to float
        Relative share of each device class.
    attacker_fraction : float
        Fraction of devices that attack (rounded to the nearest count).
    seed : int
        Seeds the class assignment and the choice of attackers (independent streams).
    """
    num_devices = len(natural_keys)
    classes = assign_device_classes(num_devices, device_mix, seed)
    attackers = choose_attackers(num_devices, attacker_fraction, seed)
    return Federation(
        tuple(
            Device(i, str(natural_keys[i]), classes[i], i in attackers) for i in range(num_devices)
        )
    )


def assign_device_classes(num_devices: int, mix: Mapping[str, float], seed: int) -> list[str]:
    """Give each device a class so that class counts follow ``mix`` as closely as integers can.

    Counts use the largest-remainder method; which device gets which class is a seeded shuffle.
    """
    names = sorted(mix)
    shares = np.array([float(mix[n]) for n in names])
    if shares.sum() <= 0 or (shares < 0).any():
        raise ConfigError(f"device_mix shares must be >= 0 and sum to > 0, got {dict(mix)}")
    exact = shares / shares.sum() * num_devices
    counts = np.floor(exact).astype(int)
    remainder_order = np.argsort(-(exact - counts), kind="stable")
    counts[remainder_order[: num_devices - counts.sum()]] += 1
    labels = [name for name, count in zip(names, counts, strict=True) for _ in range(count)]
    rng = np.random.default_rng([seed, 0xC1A55])
    return [labels[i] for i in rng.permutation(num_devices)]


def choose_attackers(num_devices: int, fraction: float, seed: int) -> frozenset[int]:
    """Choose ``round(fraction * num_devices)`` attacker ids with a seeded RNG."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"attack.fraction must be in [0, 1], got {fraction}")
    count = round(fraction * num_devices)
    rng = np.random.default_rng([seed, 0xA77AC])
    return frozenset(int(i) for i in rng.choice(num_devices, size=count, replace=False))
