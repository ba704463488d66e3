"""Which devices share a Flower node: the ``gateways`` config and its assignment.

By default every device is its own Flower node, as on a fleet whose devices each run a
SuperNode. With ``gateways.devices_per_gateway: K`` devices ``0..K-1`` sit behind gateway 0,
``K..2K-1`` behind gateway 1 and so on (the last gateway may serve fewer); ``gateways.assignment``
names each gateway's devices instead (a list of device-id lists, every device exactly once). A
gateway relays: it trains each device it is asked to, with that device's own data, class, state
and attack role, and ships every device's update in one message; the server then samples,
screens, scores and weights each device exactly as if it were a node of its own
(:class:`fl_iot.gateway_grid.GatewayGrid`), so with gateways a run's model is the model of the
same run without them (for strategies that sum in device order, which fl-iot's round loop does).

Why: Flower's simulation dispatcher costs grow with the square of its node count (28 s a round
of dispatching alone at 1,000 nodes); real fleets reach the server through edge gateways anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from fl_iot.errors import ConfigError

Assignment = tuple[tuple[int, ...], ...]
"""Gateway ``g`` serves devices ``assignment[g]``."""


@dataclass
class GatewaysConfig:
    """The ``gateways`` section of the config."""

    devices_per_gateway: int = 1
    assignment: list[list[int]] | None = None


def gateway_assignment(cfg: DictConfig) -> Assignment | None:
    """Each gateway's devices, or ``None`` when every device is its own Flower node.

    Raises
    ------
    ConfigError
        For ``devices_per_gateway`` below 1, or an assignment that does not name every device of
        the scenario exactly once.
    """
    section = cfg.get("gateways")
    if section is None:
        return None
    num_devices = int(cfg.scenario.num_devices)
    per_gateway = section.get("devices_per_gateway", 1)
    assignment = section.get("assignment")
    if isinstance(per_gateway, bool) or not isinstance(per_gateway, int) or per_gateway < 1:
        raise ConfigError(
            f"gateways.devices_per_gateway must be an integer >= 1, got {per_gateway!r}"
        )
    if assignment is not None:
        if per_gateway != 1:
            raise ConfigError("set gateways.devices_per_gateway or gateways.assignment, not both")
        gateways = tuple(tuple(_device_ids(g, i)) for i, g in enumerate(assignment))
        listed = sorted(d for g in gateways for d in g)
        if listed != list(range(num_devices)) or any(not g for g in gateways):
            raise ConfigError(
                "gateways.assignment must list every device id 0.."
                f"{num_devices - 1} exactly once, each gateway at least one; got {len(listed)} "
                f"ids for {num_devices} devices"
                + (", one of them twice" if len(set(listed)) < len(listed) else "")
            )
        return gateways
    if per_gateway == 1:
        return None
    return tuple(
        tuple(range(start, min(start + per_gateway, num_devices)))
        for start in range(0, num_devices, per_gateway)
    )


def num_nodes(cfg: DictConfig) -> int:
    """The Flower nodes a run needs: one per gateway, or one per device without gateways."""
    assignment = gateway_assignment(cfg)
    return int(cfg.scenario.num_devices) if assignment is None else len(assignment)


def _device_ids(gateway: object, index: int) -> list[int]:
    ids = (
        list(gateway) if isinstance(gateway, list | tuple) or hasattr(gateway, "__iter__") else None
    )
    if ids is None or not all(isinstance(d, int) and not isinstance(d, bool) for d in ids):
        raise ConfigError(
            f"gateways.assignment[{index}] must be a list of device ids, got {gateway!r}"
        )
    return [int(d) for d in ids]
