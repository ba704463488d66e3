"""Gateways as the server's participants: hierarchical FedAvg, judged per gateway.

With ``gateways.mode=aggregate`` each gateway averages the devices it trained
(:func:`clients.gateway.average_updates`) and ships one update with their total weight. The
strategy then aggregates gateways, not devices: :class:`GatewayAggregation` sits between the
round loop and the strategy and shows it one participant per gateway, so that sampling,
screening, anomaly rejection, reliability history and weighting all apply per gateway. A
gateway's device key in the strategy's roster and report is ``gateway-<g>``.

The round loop keeps its per-device view: the wrapper turns each message the strategy addresses
to a gateway into one message per device the server selects behind that gateway (every device,
or ``device_fraction`` of them drawn per round and gateway from the run's seed), and folds the
device replies back into one reply per gateway for the strategy, so every device's metrics,
failure and bytes are still recorded under the device. A device whose training failed is left
out of its gateway's average and counted as failed; a gateway none of whose devices trained
answers with an error; a gateway none of whose devices answered is missing.

Evaluation goes the same way: the strategy samples gateways, the selected devices of a sampled
gateway evaluate, and the round loop pools the devices' confusion matrices as without gateways; the
strategy's ``aggregate_evaluate`` gets one reply per gateway with the example-weighted means of
its devices' scalar metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from uuid import uuid4

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from clients.gateway import AGGREGATE, AGGREGATE_METRICS
from fl_iot.gateway_grid import device_node_id
from fl_iot.protocol import ARRAYS, GATEWAY_ERROR_CODE, METRICS, NUM_EXAMPLES
from fl_iot.roster import DelegatingGrid
from fl_iot.round_loop import rejection_scores

GATEWAY_NODE_BASE = 2_000_000_000
"""Gateway ``g`` is the strategy's participant node ``GATEWAY_NODE_BASE + g``."""

PHASES = ("train", "evaluate")

_DELEGATED = ("privacy_spent", "privacy_spent_if_poisson_sampling", "round_report")
"""What the round loop asks of a strategy when it has it, passed through to the wrapped one."""


def gateway_key(gateway: int) -> str:
    """The strategy's device key of gateway ``gateway`` (its roster and report key)."""
    return f"gateway-{gateway}"


class GatewayAggregation(Strategy):
    """Show ``strategy`` one participant per gateway; the round loop keeps one per device.

    Parameters
    ----------
    strategy : Strategy
        Aggregates the gateways' updates (any Flower strategy).
    gateways : mapping
        ``{gateway index: device ids}``, every device of the run exactly once.
    device_fraction : float
        The share of a sampled gateway's devices the server asks each round (at least one).
    seed : int
        Seeds which devices those are, per round, phase and gateway.
    """

    def __init__(
        self,
        strategy: Strategy,
        gateways: Mapping[int, Sequence[int]],
        device_fraction: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < device_fraction <= 1:
            raise ValueError(f"device_fraction must be in (0, 1], got {device_fraction!r}")
        self.strategy = strategy
        self.device_fraction = float(device_fraction)
        self.seed = int(seed)
        self.devices = {int(g): tuple(int(d) for d in ds) for g, ds in gateways.items()}
        self._gateway_of = {
            device_node_id(d): g for g, devices in self.devices.items() for d in devices
        }
        self._asked: dict[str, dict[int, Message]] = {}  # phase -> {gateway: strategy's message}
        self._selected: dict[str, dict[int, tuple[int, ...]]] = {}  # phase -> {gateway: devices}

    def __repr__(self) -> str:
        return f"GatewayAggregation({self.strategy!r}, participants: {len(self.devices)} gateways)"

    def __getattr__(self, name: str) -> Any:
        if name in _DELEGATED:
            return getattr(self.strategy, name)
        raise AttributeError(name)

    # -- Flower's Strategy -------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The strategy samples gateways; their selected devices are asked (:meth:`selected`)."""
        asked = self.strategy.configure_train(server_round, arrays, config, self._view(grid))
        return self._per_device(server_round, "train", asked)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Fold the device replies into one per gateway and let the strategy aggregate them."""
        return self.strategy.aggregate_train(server_round, self._folded("train", replies))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """As :meth:`configure_train`, for evaluation."""
        asked = self.strategy.configure_evaluate(server_round, arrays, config, self._view(grid))
        return self._per_device(server_round, "evaluate", asked)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """One reply per gateway: the example-weighted means of its devices' scalar metrics."""
        return self.strategy.aggregate_evaluate(server_round, self._folded("evaluate", replies))

    def summary(self) -> None:
        """The wrapped strategy's summary."""
        self.strategy.summary()

    # -- fl-iot's extensions ---------------------------------------------------------------------

    def set_roster(self, roster: Mapping[int, str | int]) -> None:
        """Give the strategy the gateways' roster, whatever the devices' roster is."""
        setter = getattr(self.strategy, "set_roster", None)
        if callable(setter):
            setter({GATEWAY_NODE_BASE + g: gateway_key(g) for g in self.devices})

    def observe_outcomes(self, server_round: int, outcomes: Mapping[int, str]) -> None:
        """Tell the strategy of the gateways none of whose asked devices delivered an update.

        ``outcomes`` is per device node (``late``, ``failed``, ``offline``); a gateway counts
        with the outcome of its first such device only when every device it was asked for has
        one: one device's failure is its own, not its gateway's.
        """
        observe = getattr(self.strategy, "observe_outcomes", None)
        if not callable(observe):
            return
        by_gateway: dict[int, list[str]] = {}
        for node, outcome in outcomes.items():
            if (gateway := self._gateway_of.get(node)) is not None:
                by_gateway.setdefault(gateway, []).append(outcome)
        asked = self._asked.get("train", {})
        observe(
            server_round,
            {
                GATEWAY_NODE_BASE + g: found[0]
                for g, found in by_gateway.items()
                if g in asked and len(found) == len(self._selected["train"][g])
            },
        )

    def detection_scores(
        self, report: Mapping[str, Any], participants: set[int], attackers: frozenset[int]
    ) -> dict[str, float]:
        """Precision and recall of the strategy's rejections, per gateway.

        A gateway is an attacker's when one of its devices that delivered an update
        (``participants``) is among ``attackers``; it is caught when the strategy refused it.
        """
        if "rejected" not in report:
            return {}
        taking_part = {g for g, ds in self.devices.items() if participants.intersection(ds)}
        bad = {g for g in taking_part if attackers.intersection(self.devices[g]) & participants}
        refused = {g for g in taking_part if gateway_key(g) in report["rejected"]}
        return rejection_scores(refused, bad)

    # -- internals -------------------------------------------------------------------------------

    def _view(self, grid: Grid) -> Grid:
        return _GatewayView(grid, [GATEWAY_NODE_BASE + g for g in sorted(self.devices)])

    def selected(self, server_round: int, phase: str, gateway: int) -> tuple[int, ...]:
        """The devices of ``gateway`` the server asks in ``server_round`` (``phase``), in order."""
        devices = self.devices[gateway]
        if self.device_fraction >= 1.0:
            return devices
        count = max(1, round(self.device_fraction * len(devices)))
        entropy = [self.seed, server_round, PHASES.index(phase), gateway]
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        return tuple(sorted(rng.choice(devices, size=count, replace=False).tolist()))

    def _per_device(self, server_round: int, phase: str, asked: Iterable[Message]) -> list[Message]:
        """One message per selected device of each gateway the strategy addressed."""
        self._asked[phase] = {}
        self._selected[phase] = {}
        messages: list[Message] = []
        for message in asked:
            gateway = message.metadata.dst_node_id - GATEWAY_NODE_BASE
            if gateway not in self.devices:
                continue
            # The strategy's message is never pushed: it gets the id a grid would give it, so
            # that the folded reply answers it.
            message.metadata.__dict__["_message_id"] = str(uuid4())
            self._asked[phase][gateway] = message
            self._selected[phase][gateway] = self.selected(server_round, phase, gateway)
            for device in self._selected[phase][gateway]:
                messages.append(
                    Message(
                        message.content,
                        dst_node_id=device_node_id(device),
                        message_type=message.metadata.message_type,
                        group_id=message.metadata.group_id,
                        ttl=message.metadata.ttl,
                    )
                )
        return messages

    def _folded(self, phase: str, replies: Iterable[Message]) -> list[Message]:
        """One reply per gateway that any device answered for, answering the strategy's message."""
        by_gateway: dict[int, list[Message]] = {}
        for reply in replies:
            gateway = self._gateway_of.get(reply.metadata.src_node_id)
            if gateway is not None:
                by_gateway.setdefault(gateway, []).append(reply)
        folded: list[Message] = []
        # In gateway order, whatever order the strategy drew them in: sums are then reproducible.
        for gateway, message in sorted(self._asked.get(phase, {}).items()):
            group = by_gateway.get(gateway)
            if not group:
                continue
            content = _train_content(group) if phase == "train" else _evaluation_content(group)
            if content is None:
                error = Error(
                    code=GATEWAY_ERROR_CODE,
                    reason=f"no device of gateway {gateway} delivered a {phase} result",
                )
                folded.append(Message(error, reply_to=message))
            else:
                folded.append(Message(content, reply_to=message))
        return folded


def _train_content(group: Sequence[Message]) -> RecordDict | None:
    """The gateway's update, as a one-device reply would carry it; ``None`` without one."""
    for reply in group:
        if reply.has_content() and AGGREGATE in reply.content:
            arrays, metrics = reply.content[AGGREGATE], reply.content[AGGREGATE_METRICS]
            return RecordDict({ARRAYS: arrays, METRICS: metrics})
    return None


def _evaluation_content(group: Sequence[Message]) -> RecordDict | None:
    """The example-weighted means of the scalar metrics every answering device reports."""
    metrics = [
        record
        for reply in group
        if reply.has_content()
        and isinstance(record := reply.content.get(METRICS), MetricRecord)
        and _weight(record) > 0
    ]
    if not metrics:
        return None
    total = sum(_weight(m) for m in metrics)
    keys = set.intersection(*(set(m) for m in metrics)) - {NUM_EXAMPLES}
    means: dict[str, int | float | list[int] | list[float]] = {NUM_EXAMPLES: total}
    for key in sorted(keys):
        values = [_scalar(m[key]) for m in metrics]
        if all(v is not None for v in values):
            weighted = (
                _weight(m) * v for m, v in zip(metrics, values, strict=True) if v is not None
            )
            means[key] = sum(weighted) / total
    return RecordDict({METRICS: MetricRecord(means)})


def _scalar(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _weight(metrics: MetricRecord) -> float:
    value = metrics.get(NUM_EXAMPLES)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)


class _GatewayView(DelegatingGrid):
    """A grid whose nodes are the gateways' participant nodes (for the strategy's sampling)."""

    def __init__(self, grid: Grid, node_ids: Sequence[int]) -> None:
        super().__init__(grid)
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)


__all__ = ["GATEWAY_NODE_BASE", "GatewayAggregation", "gateway_key"]
