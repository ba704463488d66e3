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

Accounting
    Every released round is a Gaussian mechanism; epsilon at ``delta`` is composed with
    dp-accounting (:func:`fl_iot.privacy.central_dp_epsilon`, RDP) without amplification by
    sampling, because Flower samples a fixed-size cohort and may pick the same device in
    consecutive rounds. The optimistic Poisson-sampling figure is reported alongside, labelled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
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

from fl_iot.errors import ConfigError
from fl_iot.privacy.accounting import central_dp_epsilon

log = logging.getLogger(__name__)

ROBUST_RULES = (FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan)


class CentralDP(Strategy):
    """Server-side DP with fixed clipping around ``strategy``, accounted per round.

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
            raise ConfigError(
                f"central DP cannot wrap {type(strategy).__name__}: its output can move by more "
                "than one device's bounded share, so the noise would not cover it; use a "
                "FedAvg-family strategy (fedavg, fedprox, fedadam) or strategy=reliability"
            )
        if noise_multiplier <= 0:
            raise ConfigError(f"central DP noise_multiplier must be > 0, got {noise_multiplier}")
        if max_weight_ratio < 1:
            raise ConfigError(f"central DP max_weight_ratio must be >= 1, got {max_weight_ratio}")
        if not 0 < delta < 1:
            raise ConfigError(f"central DP delta must be in (0, 1), got {delta}")
        self.strategy = strategy
        self.noise_multiplier = noise_multiplier
        self.max_weight_ratio = max_weight_ratio
        self.num_sampled_devices = num_sampled_devices
        self.num_devices = num_devices
        self.delta = delta
        self.seed = seed
        self.dp = DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=noise_multiplier * max_weight_ratio,
            clipping_norm=clipping_norm,
            num_sampled_clients=num_sampled_devices,
        )
        self.released: list[tuple[float, float, int]] = []
        self._last_round: dict[str, Any] = {}

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        self.dp.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model (clipping is relative to it) and configure the round."""
        return self.dp.configure_train(server_round, arrays, config, grid)

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
        arrays, metrics = self.dp.aggregate_train(server_round, usable)
        if arrays is not None:
            effective = self.noise_multiplier * n / self.num_sampled_devices
            self.released.append((effective, n / self.num_devices, 1))
            self._last_round.update(released=True, effective_noise_multiplier=effective)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Evaluation is not privatised (it releases only metrics to the server)."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Pass evaluation through."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def epsilon(self, amplification: str = "none") -> float:
        """Epsilon spent by the released rounds so far, at ``delta`` (0 before any release)."""
        if not self.released:
            return 0.0
        return central_dp_epsilon(self.released, self.delta, amplification=amplification)  # type: ignore[arg-type]

    def round_report(self, server_round: int) -> dict[str, Any]:
        """The wrapped strategy's report plus this round's central-DP accounting."""
        inner = getattr(self.strategy, "round_report", None)
        report = dict(inner(server_round)) if callable(inner) else {}
        report["central_dp"] = {
            **self._last_round,
            "noise_multiplier": self.noise_multiplier,
            "max_weight_ratio": self.max_weight_ratio,
            "released_rounds": len(self.released),
            "epsilon": self.epsilon("none"),
            "epsilon_if_poisson_sampling": self.epsilon("poisson"),
            "delta": self.delta,
        }
        return report
