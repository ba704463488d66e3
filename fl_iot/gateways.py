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

With ``gateways.mode: aggregate`` a gateway instead averages its trained devices' models,
weighted by their example counts, and ships one update with their total weight (hierarchical
FedAvg, :func:`clients.gateway.average_updates`); with ``gateways.edge_rejection`` it first
refuses outlying devices by anomaly rejection's own scores (:func:`edge_filter`). The server's
participants are then the gateways (:class:`fl_iot.gateway_aggregation.GatewayAggregation`):
the strategy samples gateways (``scenario.fraction_train`` is then a fraction of gateways), the
server asks ``gateways.device_fraction`` of each sampled gateway's devices, and reliability,
detection and weighting apply per gateway; each device's metrics and failure are still recorded
under the device.

Why: Flower's simulation dispatcher costs grow with the square of its node count (28 s a round
of dispatching alone at 1,000 nodes); real fleets reach the server through edge gateways anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from flwr.app import ArrayRecord
from omegaconf import DictConfig, OmegaConf

from clients.gateway import Aggregation, EdgeFilter
from fl_iot.errors import ConfigError

Assignment = tuple[tuple[int, ...], ...]
"""Gateway ``g`` serves devices ``assignment[g]``."""


class GatewayMode(StrEnum):
    """The ``gateways.mode`` values."""

    RELAY = "relay"
    AGGREGATE = "aggregate"


@dataclass
class GatewaysConfig:
    """The ``gateways`` section of the config."""

    devices_per_gateway: int = 1
    assignment: list[list[int]] | None = None
    mode: str = GatewayMode.RELAY.value
    edge_rejection: bool = False
    device_fraction: float = 1.0
    message_budget_s: float | None = None


def gateway_mode(cfg: DictConfig) -> GatewayMode:
    """The run's gateway mode, checked against the rest of the config.

    Raises
    ------
    ConfigError
        For an unknown mode; for ``aggregate`` without gateways, with rounds other than
        ``sync``, a fleet other than ``ideal`` or compression: a gateway's average is built
        from what its devices send, before the server's simulated clock could drop a late or
        offline device's update and before a codec's decoding, so those are refused rather
        than silently wrong; for ``edge_rejection`` without ``aggregate``.
    """
    from fl_iot.compression import compression_by_class, downlink_compression
    from fl_iot.fleet.build import fleet_config

    section = cfg.get("gateways") or {}
    name = section.get("mode", GatewayMode.RELAY.value)
    valid = ", ".join(m.value for m in GatewayMode)
    if name not in {m.value for m in GatewayMode}:
        raise ConfigError(f"unknown gateways.mode {name!r}; valid choices: {valid}")
    mode = GatewayMode(name)
    if section.get("edge_rejection", False) and mode is not GatewayMode.AGGREGATE:
        raise ConfigError("gateways.edge_rejection=true needs gateways.mode=aggregate")
    fraction = section.get("device_fraction", 1.0)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ConfigError(f"gateways.device_fraction must be in (0, 1], got {fraction!r}")
    budget = section.get("message_budget_s")
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget < math.inf
    ):
        raise ConfigError(
            f"gateways.message_budget_s must be > 0 and finite, or null, got {budget!r}"
        )
    if fraction != 1.0 and mode is not GatewayMode.AGGREGATE:
        raise ConfigError(
            "gateways.device_fraction needs gateways.mode=aggregate (relay samples devices "
            "by scenario.fraction_train)"
        )
    if mode is GatewayMode.RELAY:
        return mode
    if gateway_assignment(cfg) is None:
        raise ConfigError(
            "gateways.mode=aggregate needs gateways: set gateways.devices_per_gateway (> 1) "
            "or gateways.assignment"
        )
    rounds = cfg.get("rounds") or {}
    if rounds.get("mode", "sync") != "sync":
        raise ConfigError(
            f"gateways.mode=aggregate runs rounds=sync only, got rounds.mode={rounds.get('mode')!r}"
        )
    if not fleet_config(cfg).ideal:
        raise ConfigError(
            f"gateways.mode=aggregate runs fleet=ideal only, got fleet={cfg.fleet.name!r}"
        )
    if any(c is not None for c in compression_by_class(cfg).values()) or downlink_compression(cfg):
        raise ConfigError("gateways.mode=aggregate runs compression=none only")
    return mode


def message_budget(cfg: DictConfig) -> float | None:
    """Wall seconds a gateway may spend on one message (``gateways.message_budget_s``).

    Off (``None``) by default: a budget makes which devices train depend on wall time. On real
    gateways, set it below ``engine.round_timeout_s``, so that one slow device cannot make the
    whole gateway's reply miss its round.
    """
    budget = OmegaConf.select(cfg, "gateways.message_budget_s")
    return None if budget is None else float(budget)


def gateway_aggregation(cfg: DictConfig) -> Aggregation | None:
    """What an aggregating gateway of this run does (``None`` for a relaying one)."""
    if gateway_mode(cfg) is not GatewayMode.AGGREGATE:
        return None
    from fl_iot.protocol import NUM_EXAMPLES

    return Aggregation(weight_key=NUM_EXAMPLES, edge_filter=edge_filter(cfg))


def edge_filter(cfg: DictConfig) -> EdgeFilter | None:
    """The anomaly rejection an aggregating gateway applies to its devices, or ``None``.

    The strategy's own thresholds (``strategy.thresholds``, or the defaults) on the gateway's
    devices as one round: norm, direction, centrality, copies and claimed counts, each device's
    update against the model they all trained from. Fewer devices than ``min_replies`` are not
    judged (robust statistics of two values mean nothing).
    """
    if not (cfg.get("gateways") or {}).get("edge_rejection", False):
        return None
    from hydra.utils import instantiate

    from strategies import AnomalyThresholds, anomaly_scores, update_statistics
    from strategies.arrays import ModelSpec, decode_array, squared_update_norms
    from strategies.sample import SamplePlan, gather_sample

    section = OmegaConf.select(cfg, "strategy.thresholds")
    # Built as the strategy builds its own (strategy/thresholds/anomaly names the dataclass).
    thresholds: AnomalyThresholds = AnomalyThresholds() if section is None else instantiate(section)
    seed = int(cfg.seed)

    def judge(
        sent: ArrayRecord, models: Sequence[ArrayRecord], weights: Sequence[float]
    ) -> list[str | None]:
        if len(models) < thresholds.min_replies:
            return [None] * len(models)
        spec = ModelSpec.from_arrayrecord(sent)
        trained = [{k: decode_array(m[k])[0] for k in spec.keys} for m in models]
        norms = np.sqrt(squared_update_norms(trained, spec))
        plan = SamplePlan.draw(spec, 4096, seed, 0)
        stats = update_statistics(gather_sample(trained, spec, plan), norms, seed=(seed, 0))
        scores = anomaly_scores(stats, np.asarray(weights, dtype=np.float64), thresholds)
        return [
            f"refused at the edge: {reason}" if rejected else None
            for reason, rejected in zip(scores.reasons, scores.rejected, strict=True)
        ]

    return judge


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
