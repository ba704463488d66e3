"""Local result files in the run directory: metrics.jsonl, summary.json, the final model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from fl_iot.records import RoundRecord, RunSummary
from fl_iot.tracking.base import RunInfo, Sink, jsonable

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.pt"


class JsonlSink(Sink):
    """Appends one JSON record per round to ``metrics.jsonl`` and flushes it (crash-safe).

    A resumed run keeps the file's lines of the rounds its checkpoint holds, byte for byte,
    drops the lines of later rounds (the interrupted attempt's, which run again), writes the
    checkpoint's rounds the file lacks (a kill between the checkpoint and this sink) and then
    appends.
    """

    def start(self, info: RunInfo) -> None:  # noqa: D102
        info.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = info.output_dir / METRICS_FILE
        self.path.write_text("")

    def resume(self, info: RunInfo, records: Sequence[RoundRecord]) -> None:  # noqa: D102
        info.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = info.output_dir / METRICS_FILE
        done = records[-1].round if records else 0
        kept: list[str] = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines(keepends=True):
                try:
                    round_number = json.loads(line).get("round")
                except (ValueError, AttributeError):
                    break  # a line cut short by the kill: nothing after it is whole
                if not line.endswith("\n") or not isinstance(round_number, int):
                    break
                if round_number > done:
                    break
                kept.append(line)
        self.path.write_text("".join(kept))
        for record in records[len(kept) :]:
            self.log_round(record)

    def log_round(self, record: RoundRecord) -> None:  # noqa: D102
        with self.path.open("a") as handle:
            handle.write(json.dumps(jsonable(record.to_dict()), sort_keys=True) + "\n")


class SummarySink(Sink):
    """Writes ``summary.json`` at the end of the run, also when it failed."""

    def start(self, info: RunInfo) -> None:  # noqa: D102
        info.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = info.output_dir / SUMMARY_FILE

    def finish(self, summary: RunSummary, arrays: ArrayRecord | None) -> None:  # noqa: D102
        self.path.write_text(
            json.dumps(jsonable(summary.to_dict()), indent=2, sort_keys=True) + "\n"
        )


class CheckpointSink(Sink):
    """Saves the final global model as a torch state dict in ``model.pt``."""

    def start(self, info: RunInfo) -> None:  # noqa: D102
        info.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = info.output_dir / MODEL_FILE

    def finish(self, summary: RunSummary, arrays: ArrayRecord | None) -> None:  # noqa: D102
        if arrays is not None:
            torch.save(arrays.to_torch_state_dict(), self.path)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The round records of a run directory's ``metrics.jsonl``."""
    lines = (run_dir / METRICS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def load_model_state(run_dir: Path) -> dict[str, np.ndarray]:
    """The final model of a run directory as numpy arrays."""
    state = torch.load(run_dir / MODEL_FILE, weights_only=True)
    return {k: v.numpy() for k, v in state.items()}
