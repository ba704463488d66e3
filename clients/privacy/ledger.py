"""A device's privacy ledger, kept in the node's Flower ``context.state`` across rounds.

ClientApp objects do not persist between rounds, so an accountant created per round would only
ever see one round (the mistake of Flower's own Opacus example). The ledger stores the
accountant's history (the ``(noise_multiplier, sample_rate, steps)`` triples of Opacus'
``accountant.history``) as plain lists in a ``ConfigRecord``, which Flower persists per node in
simulation and deployment, and restores it at the start of every round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ConfigRecord, RecordDict

from clients.privacy.accounting import DpSgdEvent, epsilon_opacus_rdp, validate_history

LEDGER_KEY = "dp-sgd-ledger"
"""Default key of the ledger's ``ConfigRecord`` in ``context.state``."""

SCHEMA_VERSION = 1

_NOISE = "noise-multipliers"
_RATES = "sample-rates"
_STEPS = "steps"
_CALIBRATED = "calibrated-noise-multiplier"
_DECLINED = "declined-rounds"
_ACCOUNTANT = "accountant"
_VERSION = "schema-version"


@dataclass
class PrivacyLedger:
    """Everything a device must remember between rounds to account its privacy.

    Attributes
    ----------
    history : list of DpSgdEvent
        Every private release so far, in order (consecutive equal events merged, as Opacus
        does).
    calibrated_noise_multiplier : float or None
        The noise multiplier derived from the target epsilon in the device's first round; kept
        so that the noise stays constant over the run even if the plan inputs change.
    declined_rounds : int
        Rounds this device refused because its budget would have been exceeded.
    """

    history: list[DpSgdEvent] = field(default_factory=list)
    calibrated_noise_multiplier: float | None = None
    declined_rounds: int = 0

    @property
    def steps(self) -> int:
        """Private optimiser steps taken so far."""
        return sum(event.steps for event in self.history)

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (Opacus' RDP analysis)."""
        return epsilon_opacus_rdp(self.history, delta)

    @classmethod
    def load(cls, state: RecordDict, key: str = LEDGER_KEY) -> PrivacyLedger:
        """Read the ledger from ``state``; an empty ledger if the device never trained.

        Raises
        ------
        ValueError
            If the stored record is not a ledger this version can read.
        """
        if key not in state:
            return cls()
        record = state.config_records.get(key)
        if record is None:
            raise ValueError(f"context.state[{key!r}] is not a ConfigRecord; cannot read ledger")
        version = record.get(_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"context.state[{key!r}] has ledger schema {version!r}; this version reads "
                f"schema {SCHEMA_VERSION}"
            )
        noise = _float_list(record, _NOISE, key)
        rates = _float_list(record, _RATES, key)
        steps = _int_list(record, _STEPS, key)
        if not len(noise) == len(rates) == len(steps):
            raise ValueError(
                f"context.state[{key!r}] is corrupt: {len(noise)} noise multipliers, "
                f"{len(rates)} sample rates and {len(steps)} step counts"
            )
        calibrated = record.get(_CALIBRATED)
        declined = record.get(_DECLINED, 0)
        if calibrated is not None and not isinstance(calibrated, float):
            raise ValueError(f"context.state[{key!r}][{_CALIBRATED!r}] is not a float")
        if not isinstance(declined, int):
            raise ValueError(f"context.state[{key!r}][{_DECLINED!r}] is not an int")
        return cls(
            history=validate_history(
                [(n, q, s) for n, q, s in zip(noise, rates, steps, strict=True)]
            ),
            calibrated_noise_multiplier=calibrated,
            declined_rounds=declined,
        )

    def save(self, state: RecordDict, key: str = LEDGER_KEY) -> None:
        """Write the ledger to ``state`` (replacing any previous one)."""
        record = ConfigRecord(
            {
                _VERSION: SCHEMA_VERSION,
                _ACCOUNTANT: "rdp",
                # Lists in a ConfigRecord must be homogeneous: force float / int explicitly.
                _NOISE: [float(e.noise_multiplier) for e in self.history],
                _RATES: [float(e.sample_rate) for e in self.history],
                _STEPS: [int(e.steps) for e in self.history],
                _DECLINED: int(self.declined_rounds),
            }
        )
        if self.calibrated_noise_multiplier is not None:
            record[_CALIBRATED] = float(self.calibrated_noise_multiplier)
        state[key] = record


def _float_list(record: ConfigRecord, name: str, key: str) -> list[float]:
    values = record.get(name, [])
    if not isinstance(values, list) or not all(isinstance(v, float) for v in values):
        raise ValueError(f"context.state[{key!r}][{name!r}] is not a list of floats")
    return [float(v) for v in values]


def _int_list(record: ConfigRecord, name: str, key: str) -> list[int]:
    values = record.get(name, [])
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise ValueError(f"context.state[{key!r}][{name!r}] is not a list of ints")
    return [int(v) for v in values]
