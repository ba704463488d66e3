"""What the round loop hands the tracking sinks: one record per round, and the sink interface.

A leaf module, so that every sink depends on the record and not on the loop that fills it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoundRecord:
    """Everything that happened in one round, as the sinks receive it.

    ``devices`` is keyed by device id (``node-<id>`` for a node off the roll call). An entry holds
    ``device_class`` and ``attacker`` (from the federation), the numbers of the device's train
    reply, ``eval_loss``, and what went wrong: ``error`` / ``eval_error`` (the type and message of
    an error reply), ``missing`` (sampled, no reply), ``ignored`` / ``eval_ignored`` (why the
    reply's claims were not recorded or pooled: a spoof, malformed content).
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
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {k: v for k, v in self.__dict__.items()}


class RoundSink:
    """Receives each round's record (the tracking sinks implement this)."""

    def log_round(self, record: RoundRecord) -> None:
        """Called once per completed round."""
