"""A device class's differential-privacy profile, validated once.

The YAML files under ``conf/device/`` carry a ``privacy:`` block (``fl_iot.config.PrivacyConfig``);
the ClientApp passes it to the trainer as a plain dict in ``TrainSettings.privacy``. This module
turns that dict into a checked, typed object so that every bad value fails with a message naming
the value and the valid range, before any data is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from clients.errors import ConfigError


@dataclass(frozen=True)
class PrivacyProfile:
    """Sample-level (example-level) DP parameters of one device class.

    Attributes
    ----------
    target_epsilon : float or None
        The privacy budget for the whole run, at ``delta``. When ``noise_multiplier`` is not
        set, the noise is calibrated so that the planned run spends exactly this budget; in
        every case a device declines a round that would take it past this budget. ``None``
        means no budget (then ``noise_multiplier`` is required).
    delta : float
        The ``delta`` of (epsilon, delta)-DP; should be well below ``1 / n`` for ``n`` local
        samples.
    max_grad_norm : float
        Per-sample gradient clipping bound ``C`` (L2 norm, over all parameters).
    noise_multiplier : float or None
        Gaussian noise standard deviation in units of ``C``. ``None`` derives it from
        ``target_epsilon`` over the planned run.
    """

    target_epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None

    def __post_init__(self) -> None:
        if self.target_epsilon is not None and not (
            math.isfinite(self.target_epsilon) and self.target_epsilon > 0
        ):
            raise ConfigError(
                f"privacy.target_epsilon must be a finite number > 0 (or null for no budget), "
                f"got {self.target_epsilon}"
            )
        if not (math.isfinite(self.delta) and 0.0 < self.delta < 1.0):
            raise ConfigError(f"privacy.delta must be in (0, 1), got {self.delta}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ConfigError(
                f"privacy.max_grad_norm must be a finite number > 0, got {self.max_grad_norm}"
            )
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0
        ):
            raise ConfigError(
                f"privacy.noise_multiplier must be a finite number >= 0 (or null to derive it "
                f"from target_epsilon), got {self.noise_multiplier}"
            )
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise ConfigError(
                "privacy needs target_epsilon (to calibrate the noise) or noise_multiplier "
                "(to set it); both are null"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> PrivacyProfile:
        """Build a profile from a ``privacy:`` mapping (a dict or a ``DictConfig``).

        Raises
        ------
        ConfigError
            For an unknown key or a value outside its valid range.
        """
        known = ("target_epsilon", "delta", "max_grad_norm", "noise_multiplier")
        unknown = sorted(str(k) for k in values if k not in known)
        if unknown:
            raise ConfigError(
                f"unknown privacy setting(s) {', '.join(unknown)}; valid keys: {', '.join(known)}"
            )
        return cls(
            target_epsilon=_optional_float(values.get("target_epsilon"), "target_epsilon"),
            delta=_float(values.get("delta", 1e-5), "delta"),
            max_grad_norm=_float(values.get("max_grad_norm", 1.0), "max_grad_norm"),
            noise_multiplier=_optional_float(values.get("noise_multiplier"), "noise_multiplier"),
        )


def _float(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"privacy.{key} must be a number, got {value!r}")
    return float(value)


def _optional_float(value: object, key: str) -> float | None:
    return None if value is None else _float(value, key)
