"""What the server hands the tracking sinks: a record per round, the run's summary, the sink.

A leaf module, so that every sink depends on the records and not on the code that fills them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

TRAFFIC_KEYS = (
    "payload_bytes_up",
    "payload_bytes_down",
    "message_bytes_up",
    "message_bytes_down",
    "uncompressed_payload_bytes_up",
    "uncompressed_payload_bytes_down",
    "eval_message_bytes_up",
    "eval_message_bytes_down",
)
"""The byte counts of a device's traffic in a round (see :class:`RoundRecord`)."""
EVALUATION_TRAFFIC_KEYS = ("eval_message_bytes_up", "eval_message_bytes_down")
"""Those of federated evaluation: the model down, the device's scores up (whole messages)."""


@dataclass
class RoundRecord:
    """Everything that happened in one round, as the sinks receive it.

    ``devices`` is keyed by device id (``node-<id>`` for a node off the roll call). An entry holds
    ``device_class`` and ``attacker`` (from the federation), the numbers of the device's train
    reply, ``eval_loss``, and what went wrong: ``error`` / ``eval_error`` (the type and message of
    an error reply), ``missing`` (sampled, no reply), ``ignored`` / ``eval_ignored`` (why the
    reply's claims were not recorded or pooled: a spoof, malformed content), and the device's
    part on the simulated clock (:class:`fl_iot.schedule.DeviceRound`: ``online``, ``outcome``,
    ``bytes_down``/``bytes_up``, ``sent_s``, ``download_s``, ``started_s``, ``compute_s``,
    ``finished_s``, ``upload_s``,
    ``arrival_s``, ``staleness``). ``fleet`` holds the round's simulated ``clock_s`` at its close,
    its duration, the count of each outcome and the bytes moved. A device's entry also holds
    its training traffic (``payload_bytes_up``/``_down``: the update and the model alone,
    ``message_bytes_up``/``_down``: whole serialised messages, ``uncompressed_payload_bytes_up``
    and ``_down``: the whole model either would weigh uncompressed; ``eval_message_bytes_up`` and
    ``_down``: federated evaluation's whole messages), and ``communication`` their sums over the
    round.
    """

    round: int
    num_rounds: int
    elapsed_s: float
    round_time_s: float
    central: dict[str, float] = field(default_factory=dict)
    federated: dict[str, float] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)
    sampled: int = 0
    replied: int = 0
    failed: int = 0
    declined: int = 0
    missing: int = 0
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_class: dict[str, dict[str, float]] = field(default_factory=dict)
    strategy: dict[str, Any] = field(default_factory=dict)
    detection: dict[str, float] = field(default_factory=dict)
    privacy: dict[str, float] = field(default_factory=dict)
    fleet: dict[str, float] = field(default_factory=dict)
    communication: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {k: v for k, v in self.__dict__.items()}


class RunStatus(StrEnum):
    """How a run ended, as ``summary.json`` says."""

    COMPLETED = "completed"
    """Every round ran (devices may have failed; the CLI still judges the final model)."""
    FAILED = "failed"
    """The server stopped on an error, an interrupt included."""


@dataclass
class ClientCounts:
    """Device-rounds over the whole run: sampled, and how each ended."""

    sampled: int = 0
    replied: int = 0
    failed: int = 0
    declined: int = 0
    missing: int = 0


@dataclass
class FinalMetrics:
    """The last round's scores: central, pooled federated, train, and per device class."""

    central: dict[str, float] = field(default_factory=dict)
    federated: dict[str, float] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)
    by_class: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class RunSummary:
    """The end of a run, as the sinks receive it; ``summary.json`` is :meth:`to_dict`.

    ``error`` is empty for a completed run. ``best_central`` is the round with the best central
    macro-F1 (its number under ``round``); ``detection`` and ``privacy`` are the run's totals
    (see :mod:`fl_iot.tracking.summary`); ``errors`` are ``"round <n>: <error>"`` lines.
    """

    status: RunStatus
    error: str
    scenario: str | None
    strategy: str | None
    seed: int | None
    rounds_completed: int
    final: FinalMetrics
    best_central: dict[str, float]
    initial_central: dict[str, float]
    detection: dict[str, float]
    privacy: dict[str, float]
    clients: ClientCounts
    timings: dict[str, float | None]
    errors: list[str]
    dataset: dict[str, Any]
    federation: dict[str, Any]
    model_parameters: int
    versions: dict[str, str]
    config: dict[str, Any]
    communication: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the status as its string)."""
        return {**asdict(self), "status": str(self.status)}


class RoundSink:
    """Receives each round's record (the tracking sinks implement this)."""

    def log_round(self, record: RoundRecord) -> None:
        """Called once per completed round."""
