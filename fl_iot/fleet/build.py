"""The fleet of a composed config: each device's conditions, planned steps and speed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from fl_iot.fleet.conditions import DeviceConditions, FleetConfig
from fl_iot.fleet.simulator import FleetDevice, FleetSimulator
from fl_iot.fleet.trace import read_trace


def fleet_config(cfg: DictConfig) -> FleetConfig:
    """``cfg.fleet`` as the typed :class:`FleetConfig` (also from a config without the schema)."""
    fleet = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FleetConfig), cfg.fleet))
    assert isinstance(fleet, FleetConfig)
    return fleet


def planned_steps(cfg: DictConfig, device_class: str, train_samples: int) -> int:
    """Optimiser steps a device of ``device_class`` with ``train_samples`` takes per round."""
    spec = cfg.device_classes[device_class]
    steps = spec.local_epochs * math.ceil(train_samples / spec.batch_size)
    return int(min(steps, spec.max_steps) if spec.max_steps is not None else steps)


def fleet_devices(
    cfg: DictConfig, device_classes: Sequence[str], train_samples: Sequence[int]
) -> dict[int, FleetDevice]:
    """Every device's :class:`FleetDevice`, by device id (the index in both sequences)."""
    fleet = fleet_config(cfg)
    return {
        device: FleetDevice(
            device_class=name,
            conditions=fleet.classes.get(name, DeviceConditions()),
            planned_steps=planned_steps(cfg, name, samples),
            relative_speed=float(cfg.device_classes[name].relative_speed),
        )
        for device, (name, samples) in enumerate(zip(device_classes, train_samples, strict=True))
    }


def build_fleet(
    cfg: DictConfig, device_classes: Sequence[str], train_samples: Sequence[int]
) -> FleetSimulator:
    """The run's :class:`FleetSimulator` (its trace read when ``fleet.trace`` is set)."""
    fleet = fleet_config(cfg)
    trace: Mapping[int, list[tuple[float, float]]] | None = None
    if fleet.trace is not None:
        trace = read_trace(fleet.trace)
    return FleetSimulator(
        fleet, fleet_devices(cfg, device_classes, train_samples), seed=int(cfg.seed), trace=trace
    )
