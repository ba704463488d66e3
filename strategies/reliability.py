"""Per-device reliability from the history of rounds, with decay so that a device can recover.

The score is a beta-reputation estimate (Jøsang & Ismail 2002; the reputation used by Kang et al.,
"Reliable FL for Mobile Networks", 2020)::

    reliability = (α + G) / (α + β + G + p_late·L + p_fail·F + p_anom·A)

``G`` counts good rounds (a completed update, less its anomaly share), ``L`` rounds the device was
asked to train but never answered, ``F`` error replies and ``A`` anomaly (a rejected or malformed
update counts 1, an accepted one its share from :func:`strategies.scoring.history_anomaly`).
``α = prior·prior_strength`` and ``β = (1 - prior)·prior_strength`` are the prior: a new device
starts at ``prior``.

Decay is per *observation*, not per wall-clock round: each time a device is configured or replies,
its counts are multiplied by ``decay`` before the new event is added. Good behaviour therefore
washes out old penalties (after ``k`` clean rounds a penalty weighs ``decay**k``), while a device
that the sampler rarely picks keeps its evidence instead of sliding back to the prior, so infrequent
sampling is not mistaken for unreliability. Lateness and failures are penalised less than anomalies:
IoT devices drop out for battery and network reasons ("unintentionally unreliable", Kang et al.),
which says nothing about the honesty of the updates they do send.

The tracker also keeps each device's decayed mean *direction* (the robust z-score of its update's
agreement with the round's reference, see :mod:`strategies.scoring`), which the weighting turns
into the agreement quality. One round's direction says little on a non-IID fleet: honest devices
with an unusual data mix point away now and then, and when colluders are many in a round they
shape the round's reference itself. Their history separates them: attackers point away round
after round, honest devices only sometimes (what that is worth: ``docs/results.md``).

Events of a round are *pending* until a later round is scored, so a round's weights always use the
history of earlier rounds only, and recording the same round twice (a wrapper and the strategy it
wraps both observing it) keeps the most severe outcome instead of counting it twice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """What one device did in one round, from least to most severe."""

    COMPLETED = "completed"
    LATE = "late"
    FAILED = "failed"
    MALFORMED = "malformed"
    REJECTED = "rejected"


OUTCOMES = tuple(o.value for o in Outcome)
"""The values of :class:`Outcome`, from least to most severe."""

_SEVERITY = {name: rank for rank, name in enumerate(OUTCOMES)}
_STATE_VERSION = 2
DIRECTION_RANGE = (-4.0, 1.0)
"""A round's direction z-score is clipped to this range before it enters the history: one extreme
round cannot dominate the mean, and a device cannot bank agreement to spend in a later attack."""


@dataclass
class PendingEvent:
    """A device's event of a round not yet folded into its history."""

    round: int
    outcome: str
    anomaly: float
    direction: float | None


@dataclass
class DeviceHistory:
    """One device's decayed counts, direction history and pending event."""

    good: float = 0.0
    late: float = 0.0
    failed: float = 0.0
    anomaly: float = 0.0
    observations: int = 0
    direction_sum: float = 0.0
    direction_weight: float = 0.0
    last_round: int | None = None
    pending: PendingEvent | None = None

    def counts(self) -> dict[str, float]:
        """The decayed counts and the number of observations."""
        return {
            "good": self.good,
            "late": self.late,
            "failed": self.failed,
            "anomaly": self.anomaly,
            "observations": self.observations,
        }


def _check(name: str, value: float, low: float, high: float, *, open_low: bool = False) -> float:
    ok = (low < value if open_low else low <= value) and value <= high
    if not (isinstance(value, int | float) and math.isfinite(value) and ok):
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")
    return float(value)


class ReliabilityTracker:
    """Remembers how each device behaved and turns it into a reliability in ``(0, 1)``.

    Parameters
    ----------
    decay : float
        Factor applied to a device's history at each new observation, in ``(0, 1]``. 0.9 gives a
        memory of about 10 observations (a penalty halves in 6.6 clean rounds); 1.0 never forgets.
    prior : float
        Reliability of a device never seen before, in ``(0, 1)``. 0.5: trust is earned.
    prior_strength : float
        Weight of the prior in observations (> 0). 2.0 is the uniform (Laplace) prior.
    late_penalty : float
        Weight of a round without a reply (>= 0). 0.5: a missed deadline is mostly the network.
    failure_penalty : float
        Weight of an error reply (>= 0).
    anomaly_penalty : float
        Weight of one unit of anomaly (>= 0). 2.0: a rejected update costs twice an error reply.

    Notes
    -----
    Each device's history is a :class:`DeviceHistory`; :meth:`state_dict` is plain dicts of
    floats, ints and strings (JSON-serialisable) and :meth:`load_state_dict` restores it for a
    resumed run.
    """

    def __init__(
        self,
        decay: float = 0.9,
        prior: float = 0.5,
        prior_strength: float = 2.0,
        late_penalty: float = 0.5,
        failure_penalty: float = 1.0,
        anomaly_penalty: float = 2.0,
    ) -> None:
        self.decay = _check("decay", decay, 0.0, 1.0, open_low=True)
        self.prior = _check("prior", prior, 0.0, 1.0, open_low=True)
        if self.prior >= 1.0:
            raise ValueError(f"prior must be in (0, 1), got {prior!r}")
        self.prior_strength = _check("prior_strength", prior_strength, 0.0, math.inf, open_low=True)
        self.late_penalty = _check("late_penalty", late_penalty, 0.0, math.inf)
        self.failure_penalty = _check("failure_penalty", failure_penalty, 0.0, math.inf)
        self.anomaly_penalty = _check("anomaly_penalty", anomaly_penalty, 0.0, math.inf)
        self._devices: dict[str, DeviceHistory] = {}

    # -- recording ---------------------------------------------------------------------------

    def observe(
        self,
        device: str,
        server_round: int,
        outcome: str,
        anomaly: float = 0.0,
        direction: float | None = None,
    ) -> None:
        """Record what ``device`` did in ``server_round``.

        Parameters
        ----------
        device : str
            Device key (``str`` of the device id, or of the node id in plain Flower apps).
        server_round : int
            The round the event belongs to.
        outcome : Outcome or str
            An :class:`Outcome` or its value.
        anomaly : float
            For ``completed``: the anomaly share in ``[0, 1]`` of the accepted update.
            ``rejected`` and ``malformed`` always count 1.
        direction : float or None
            The update's direction z-score in the round, if it was scored (clipped to
            :data:`DIRECTION_RANGE`; NaN and ``None`` add nothing).

        Raises
        ------
        ValueError
            For an unknown outcome or an anomaly outside ``[0, 1]``.
        """
        try:
            outcome = str(Outcome(outcome))  # a plain string in the state, whatever was passed
        except ValueError:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}") from None
        anomaly = _check("anomaly", anomaly, 0.0, 1.0)
        direction = _clipped_direction(direction)
        record = self._devices.setdefault(device, DeviceHistory())
        if record.pending is not None and record.pending.round != server_round:
            # Another round's event: it becomes history now (even if rounds restarted, as in a
            # second run on the same tracker; nothing here may raise inside aggregation).
            self._fold(record, before_round=None)
        pending = record.pending
        if pending is None:
            record.pending = PendingEvent(server_round, outcome, anomaly, direction)
            return
        # Same round seen twice: keep the most severe outcome, then the larger anomaly share,
        # and the lower direction.
        if (_SEVERITY[outcome], anomaly) > (_SEVERITY[pending.outcome], pending.anomaly):
            pending.outcome, pending.anomaly = outcome, anomaly
        if direction is not None:
            seen = pending.direction
            pending.direction = direction if seen is None else min(seen, direction)

    def _fold(self, record: DeviceHistory, before_round: int | None) -> None:
        pending = record.pending
        if pending is None or (before_round is not None and pending.round >= before_round):
            return
        record.good *= self.decay
        record.late *= self.decay
        record.failed *= self.decay
        record.anomaly *= self.decay
        if pending.direction is not None:
            record.direction_sum = self.decay * record.direction_sum + pending.direction
            record.direction_weight = self.decay * record.direction_weight + 1.0
        outcome = pending.outcome
        if outcome == Outcome.COMPLETED:
            record.good += 1.0 - pending.anomaly
            record.anomaly += pending.anomaly
        elif outcome == Outcome.LATE:
            record.late += 1.0
        elif outcome == Outcome.FAILED:
            record.failed += 1.0
        else:  # rejected or malformed: content the server had to refuse
            record.anomaly += 1.0
        record.observations += 1
        record.last_round = pending.round
        record.pending = None

    # -- reading -----------------------------------------------------------------------------

    def reliability(self, device: str, server_round: int | None = None) -> float:
        """Reliability of ``device`` from its history before ``server_round``.

        ``None`` includes every recorded round. A device never seen has ``prior``.
        """
        record = self._devices.get(device)
        if record is None:
            return self.prior
        self._fold(record, before_round=server_round)
        alpha = self.prior * self.prior_strength
        beta = (1.0 - self.prior) * self.prior_strength
        bad = (
            self.late_penalty * record.late
            + self.failure_penalty * record.failed
            + self.anomaly_penalty * record.anomaly
        )
        return (alpha + record.good) / (alpha + beta + record.good + bad)

    def mean_direction(self, device: str, direction: float, server_round: int) -> float:
        """The device's decayed mean direction z-score, this round's ``direction`` included.

        Earlier rounds come from the history before ``server_round``; one pseudo-observation at 0
        shrinks the mean of a device with little history, so that a single round moves a new
        device only half-way. NaN ``direction`` (round not scored): the history alone.
        """
        record = self._devices.get(device)
        total, weight = 0.0, 1.0  # the pseudo-observation
        if record is not None:
            self._fold(record, before_round=server_round)
            total += record.direction_sum
            weight += record.direction_weight
        current = _clipped_direction(direction)
        if current is not None:
            total += current
            weight += 1.0
        return total / weight

    def history(self, device: str, server_round: int | None = None) -> dict[str, float]:
        """Decayed counts of ``device`` before ``server_round`` (zeros for an unknown device)."""
        record = self._devices.get(device)
        if record is None:
            return DeviceHistory().counts()
        self._fold(record, before_round=server_round)
        return record.counts()

    def devices(self) -> list[str]:
        """Every device with a history."""
        return sorted(self._devices)

    # -- persistence -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy of the parameters and every device's history."""
        return {
            "version": _STATE_VERSION,
            "params": {
                "decay": self.decay,
                "prior": self.prior,
                "prior_strength": self.prior_strength,
                "late_penalty": self.late_penalty,
                "failure_penalty": self.failure_penalty,
                "anomaly_penalty": self.anomaly_penalty,
            },
            "devices": {d: asdict(r) for d, r in self._devices.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; parameters are validated as in the constructor.

        Raises
        ------
        ValueError
            If the state has another version or is missing fields.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"unsupported tracker state version {state.get('version')!r}, "
                f"expected {_STATE_VERSION}"
            )
        fresh = ReliabilityTracker(**state["params"])
        devices: dict[str, DeviceHistory] = {}
        for device, record in state["devices"].items():
            devices[str(device)] = _history_from_state(str(device), record)
        self.__dict__.update(fresh.__dict__)
        self._devices = devices


def _clipped_direction(direction: float | None) -> float | None:
    """``direction`` clipped to :data:`DIRECTION_RANGE`; ``None`` for ``None`` and NaN/Inf."""
    if direction is None or not math.isfinite(direction):
        return None
    return min(max(float(direction), DIRECTION_RANGE[0]), DIRECTION_RANGE[1])


def _history_from_state(device: str, record: dict[str, Any]) -> DeviceHistory:
    """The :class:`DeviceHistory` a :meth:`ReliabilityTracker.state_dict` entry describes.

    Raises
    ------
    ValueError
        If the entry or its pending event has other fields than the dataclasses.
    """
    pending = record.get("pending")
    checks = [(DeviceHistory, record)] + ([] if pending is None else [(PendingEvent, pending)])
    for cls, given in checks:
        expected = {f.name for f in fields(cls)}
        if not isinstance(given, dict) or set(given) != expected:
            found = sorted(given) if isinstance(given, dict) else type(given).__name__
            raise ValueError(f"device {device!r}: expected fields {sorted(expected)}, got {found}")
    return DeviceHistory(
        **{**record, "pending": None if pending is None else PendingEvent(**pending)}
    )
