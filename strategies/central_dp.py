"""Central (device-level) differential privacy around a strategy, with epsilon reported per round.

The mechanism is Flower's ``DifferentialPrivacyServerSideFixedClipping``: the server clips every
device's update (model minus the global model) to L2 norm ``C``, lets the wrapped strategy
aggregate the clipped updates, and adds Gaussian noise of standard deviation ``z' C / m`` to the
aggregate, ``m`` being the devices sampled per round. :class:`CentralDP` adds what that wrapper
leaves open:

Sensitivity of a weighted sum
    The noise is calibrated to the sensitivity ``C / m`` of an unweighted mean. A weighted mean
    ``Σ w_i x_i`` moves by up to ``max_i w_i · C`` when one device's update changes, so weights
    must be bounded. Flower's FedAvg family (FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad, FedAvgM)
    aggregates with *equal* weights here: every reply's sample count is set to 1 before
    aggregation. A strategy that weighs devices itself (fl-iot's ``ReliabilityWeightedFedAvg``)
    must expose ``max_weight_share``: it is set to ``κ / n`` for the ``n`` replies of the round, so
    no device holds more than ``κ`` times an equal share, and the noise is multiplied by ``κ``
    (``max_weight_ratio``). ``ReliabilityWeightedFedAvg`` then caps the shares by water-filling
    and drops the factors computed from the other devices' updates of the round (agreement
    quality, the median-norm bound), through which one device could move the others' weights.
    Robust rules (median, trimmed mean, Krum, Bulyan) and anomaly
    rejection choose their output from all updates at once, so one device can move it by more
    than its share; they are refused.

Fewer replies than sampled
    Devices fail or decline. Rather than skipping the round (Flower's wrapper skips a round with
    any error reply), error replies are dropped and the round is accounted with the noise it
    really had relative to its sensitivity: ``z_eff = z · n / m`` for ``n`` replies.

Integer buffers
    Clipping and noise apply to the floating-point arrays. Integer and boolean buffers
    (BatchNorm's ``num_batches_tracked``) keep the global model's value under central DP: a
    device's count of local batches reveals its data size, Gaussian noise on the scale of the
    parameters cannot hide an integer, and Flower's clipping cannot scale an integer array.
    Neither Flower's wrapper nor the wrapped strategy sees a device's integer buffers.

Accounting
    Every released round is a Gaussian mechanism; epsilon at ``delta`` is composed by Flower's
    RDP accountant (``flwr.supercore.privacy_accounting``, dp-accounting underneath), one event
    per released round with the noise it really had, without amplification by sampling,
    because Flower samples a fixed-size cohort and may pick the same device in consecutive
    rounds. The optimistic Poisson-sampling figure is reported alongside, labelled;
    its sampling rate is the share of the fleet the round sampled (``sampled / N``), whatever
    share of the sampled devices replied.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from strategies.arrays import ArrayFormatError, ModelSpec, restore_layout
from strategies.report import RoundReport
from strategies.validation import clone_reply
from strategies.wrapper import StrategyWrapper

log = logging.getLogger(__name__)

ROBUST_RULES = (FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan)


class CentralDP(StrategyWrapper):
    """Server-side DP with fixed clipping around ``strategy``, accounted per round.

    Evaluation passes through unprivatised: it releases only metrics to the server.

    Parameters
    ----------
    strategy : Strategy
        A FedAvg-family strategy, or one with a ``max_weight_share`` attribute.
    noise_multiplier : float
        ``z``: noise standard deviation in units of the sensitivity ``C / m``.
    clipping_norm : float
        ``C``: every update is clipped to this L2 norm.
    num_sampled_devices : int
        ``m``: devices sampled per round.
    num_devices : int
        ``N``: devices in the fleet (for the sampling rate).
    delta : float
        ``delta`` at which epsilon is reported; should be below ``1 / N``.
    max_weight_ratio : float
        ``κ >= 1``: the largest weight a device may get, in units of an equal share.
    seed : int
        Seeds the noise, so a run is reproducible.
    """

    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_devices: int,
        num_devices: int,
        delta: float = 1e-5,
        max_weight_ratio: float = 1.0,
        seed: int = 0,
    ) -> None:
        if isinstance(strategy, ROBUST_RULES) or not (
            isinstance(strategy, FedAvg) or hasattr(strategy, "max_weight_share")
        ):
            raise ValueError(
                f"central DP cannot wrap {type(strategy).__name__}: its output can move by more "
                "than one device's bounded share, so the noise would not cover it; use a "
                "FedAvg-family strategy (fedavg, fedprox, fedadam) or strategy=reliability"
            )
        if noise_multiplier <= 0:
            raise ValueError(f"central DP noise_multiplier must be > 0, got {noise_multiplier}")
        if max_weight_ratio < 1:
            raise ValueError(f"central DP max_weight_ratio must be >= 1, got {max_weight_ratio}")
        if not 0 < delta < 1:
            raise ValueError(f"central DP delta must be in (0, 1), got {delta}")
        super().__init__(strategy)
        self.noise_multiplier = noise_multiplier
        self.max_weight_ratio = max_weight_ratio
        self.num_sampled_devices = num_sampled_devices
        self.num_devices = num_devices
        self.delta = delta
        self.seed = seed
        self._floats = _FloatArraysOnly(strategy)
        self.dp = DifferentialPrivacyServerSideFixedClipping(
            self._floats,
            noise_multiplier=noise_multiplier * max_weight_ratio,
            clipping_norm=clipping_norm,
            num_sampled_clients=num_sampled_devices,
        )
        self.released: list[tuple[float, int]] = []
        """``(effective noise multiplier, devices sampled)`` of every released round."""
        # One running accountant per sampling method, composed as rounds are released: composing
        # a Poisson-subsampled event is the slow part of the accounting, and rebuilding from
        # ``released`` at every read would repeat it for every earlier round. Created at the
        # first release, so that building the strategy does not load dp-accounting.
        self._accountants: dict[SamplingMethod, RdpAccountant] = {}
        self._last_round: dict[str, Any] = {}
        self._sampled: dict[int, int] = {}
        self._spec: ModelSpec | None = None

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        self.dp.summary()

    def set_roster(self, roster: Mapping[int, str] | None) -> None:
        """Pass the roster, ``{node_id: device_key}``, on to the wrapped strategy if it has one."""
        setter = getattr(self.strategy, "set_roster", None)
        if callable(setter):
            setter(roster)

    def observe_outcomes(self, server_round: int, outcomes: Mapping[int, str]) -> None:
        """Pass what became of unanswered nodes on to the wrapped strategy if it asks."""
        observe = getattr(self.strategy, "observe_outcomes", None)
        if callable(observe):
            observe(server_round, outcomes)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model (clipping is relative to it) and configure the round."""
        messages = list(self.dp.configure_train(server_round, arrays, config, grid))
        self._sampled = {server_round: len(messages)}
        try:
            self._spec = ModelSpec.from_arrayrecord(arrays)
        except ArrayFormatError as error:
            log.warning("central DP: global model not readable (%s)", error)
            self._spec = None
        if self._floats.set_model(arrays, self._spec):
            self.dp.current_arrays = self._floats.float_record(arrays)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, aggregate with bounded weights, add noise; account the round if released."""
        usable = [r for r in replies if not r.has_error()]
        self._last_round = {"replies": len(usable), "released": False}
        if not usable:
            return None, None
        n = len(usable)
        if hasattr(self.strategy, "max_weight_share"):
            self.strategy.max_weight_share = self.max_weight_ratio / n
        else:
            weight_key = self.strategy.weighted_by_key  # type: ignore[attr-defined]
            for reply in usable:
                for record in reply.content.metric_records.values():
                    record[weight_key] = 1
        # Flower's noise comes from numpy's global generator: seed it per round.
        np.random.seed(int(np.random.SeedSequence([self.seed, server_round]).generate_state(1)[0]))
        arrays, metrics = self.dp.aggregate_train(
            server_round, [self._floats.strip(r) for r in usable]
        )
        if arrays is not None:
            arrays = self._floats.complete(arrays)
            if self._spec is not None:
                arrays, problems = restore_layout(arrays, self._spec)
                for problem in problems:
                    log.warning("central DP: the aggregate's %s", problem)
            effective = self.noise_multiplier * n / self.num_sampled_devices
            # The rate the round sampled with: devices that fail do not make sampling sparser.
            sampled = self._sampled.get(server_round, self.num_sampled_devices)
            self._release(effective, min(sampled, self.num_devices))
            self._last_round.update(released=True, effective_noise_multiplier=effective)
        return arrays, metrics

    def privacy_spent(self) -> PrivacySpent:
        """What the released rounds spent at ``delta``, without amplification by sampling.

        The method Flower's DP wrappers have (``DifferentialPrivacyServerSideFixedClipping``),
        so that an application reads any of them the same way.
        """
        return self._spent(SamplingMethod.NO_AMPLIFICATION)

    def privacy_spent_if_poisson_sampling(self) -> PrivacySpent:
        """What the released rounds spent if each device joined each round independently.

        Only valid if the cohort were drawn that way (Flower samples a fixed-size cohort), at
        the rate each round sampled with; reported alongside :meth:`privacy_spent`, labelled.
        """
        return self._spent(SamplingMethod.POISSON)

    def _release(self, noise_multiplier: float, sampled: int) -> None:
        """Record a released round and compose it into both accountants."""
        self.released.append((noise_multiplier, sampled))
        for sampling in (SamplingMethod.NO_AMPLIFICATION, SamplingMethod.POISSON):
            if sampling not in self._accountants:
                config = PrivacyConfig(
                    self.delta, self.num_devices, NeighboringRelation.ADD_OR_REMOVE_ONE, sampling
                )
                self._accountants[sampling] = RdpAccountant(config)
            event = GaussianPrivacyEvent(noise_multiplier, sampled, self.num_devices)
            self._accountants[sampling].compose(event)

    def _spent(self, sampling: SamplingMethod) -> PrivacySpent:
        accountant = self._accountants.get(sampling)
        if accountant is None:
            return PrivacySpent(0.0, self.delta, 0, f"rdp, {sampling.value}")
        return accountant.get_privacy_spent()

    def round_report(self, server_round: int) -> RoundReport | dict[str, Any]:
        """The wrapped strategy's report plus this round's central-DP accounting.

        A :class:`~strategies.report.RoundReport` with a ``central_dp`` section when the wrapped
        strategy reports one; otherwise its dict (empty when it reports nothing) with that key.
        """
        inner = getattr(self.strategy, "round_report", None)
        report = inner(server_round) if callable(inner) else {}
        section = {
            **self._last_round,
            "noise_multiplier": self.noise_multiplier,
            "max_weight_ratio": self.max_weight_ratio,
            "released_rounds": len(self.released),
            "epsilon": self.privacy_spent().epsilon,
            "epsilon_if_poisson_sampling": self.privacy_spent_if_poisson_sampling().epsilon,
            "delta": self.delta,
        }
        if isinstance(report, RoundReport):
            return replace(report, sections={**report.sections, "central_dp": section})
        return {**dict(report), "central_dp": section}


class _FloatArraysOnly(StrategyWrapper):
    """What Flower's DP wrapper sees of the wrapped strategy: the floating-point arrays only.

    Flower's clipping scales every array of an update in place (an integer array cannot be
    scaled) and its noise is drawn for every array; integer buffers must not leave a device
    under central DP anyway (see the module docstring). :class:`CentralDP` strips them from the
    replies before Flower's wrapper clips; here, on the way into the wrapped strategy, every
    reply gets the global model's integer buffers back, so the wrapped strategy sees replies of
    the model's full layout whose integer buffers did not move. Its aggregate's integer buffers
    are stripped again before the noise, and :meth:`complete` restores the global model's.
    For a model without integer buffers every method passes through unchanged.
    """

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self._model: ArrayRecord | None = None
        self._fixed: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return repr(self.strategy)

    def set_model(self, arrays: ArrayRecord, spec: ModelSpec | None) -> bool:
        """Note the global model of the round; whether it holds integer or boolean buffers."""
        fixed = (
            frozenset() if spec is None else frozenset(a.key for a in spec.arrays if not a.is_float)
        )
        self._model, self._fixed = (arrays, fixed) if fixed else (None, frozenset())
        return bool(fixed)

    def float_record(self, record: ArrayRecord) -> ArrayRecord:
        """``record`` without the integer buffers."""
        return ArrayRecord({k: a for k, a in record.items() if k not in self._fixed})

    def strip(self, reply: Message) -> Message:
        """A copy of ``reply`` whose ArrayRecords lack the integer buffers."""
        return self._replace_arrays(reply, self.float_record)

    def complete(self, record: ArrayRecord) -> ArrayRecord:
        """``record`` with the global model's integer buffers, in the global model's order."""
        if self._model is None:
            return record
        arrays = {
            k: self._model[k] if k in self._fixed else record[k]
            for k in self._model
            if k in self._fixed or k in record
        }
        arrays.update({k: a for k, a in record.items() if k not in arrays})
        return ArrayRecord(arrays)

    def _replace_arrays(self, reply: Message, change: Any) -> Message:
        if self._model is None or not reply.has_content():
            return reply
        content = RecordDict(
            {k: change(r) if isinstance(r, ArrayRecord) else r for k, r in reply.content.items()}
        )
        return clone_reply(reply, content)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Give the replies the global integer buffers back, delegate, strip them again."""
        full = [self._replace_arrays(r, self.complete) for r in replies]
        arrays, metrics = self.strategy.aggregate_train(server_round, full)
        if arrays is not None and self._model is not None:
            arrays = self.float_record(arrays)
        return arrays, metrics
