"""The sink contract and the run description every sink receives."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from fl_iot.records import RoundRecord, RoundSink, RunSummary


@dataclass
class RunInfo:
    """What a run is: its config, data, federation, model size and software versions."""

    config: dict[str, Any]
    output_dir: Path
    dataset: dict[str, Any] = field(default_factory=dict)
    federation: dict[str, Any] = field(default_factory=dict)
    model_parameters: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    raw_data: dict[str, Any] = field(default_factory=dict)  # the raw-upload baseline


class Sink(RoundSink):
    """Receives a run's start, each round and its end. Methods are no-ops by default."""

    def start(self, info: RunInfo) -> None:
        """Called once before the first round."""

    def resume(self, info: RunInfo, records: Sequence[RoundRecord]) -> None:
        """Called instead of :meth:`start` when a run continues after ``records``' rounds.

        ``records`` are the rounds the checkpoint holds; a sink's files may hold rounds after
        them, from the attempt that was interrupted, which the resumed run runs again. By
        default the sink starts as for a fresh run.
        """
        self.start(info)

    def log_round(self, record: RoundRecord) -> None:
        """Called once per completed round."""

    def finish(self, summary: RunSummary, arrays: ArrayRecord | None) -> None:
        """Called once at the end, also when the run failed (``summary.status``)."""


class History(Sink):
    """Keeps every round record in memory, for the summary."""

    def __init__(self) -> None:
        self.records: list[RoundRecord] = []

    def resume(self, info: RunInfo, records: Sequence[RoundRecord]) -> None:  # noqa: D102
        self.records = list(records)

    def log_round(self, record: RoundRecord) -> None:  # noqa: D102
        self.records.append(record)


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars made Python and non-finite floats made ``None`` (valid JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
