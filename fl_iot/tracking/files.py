"""Local result files in the run directory: metrics.jsonl, summary.json, the final model."""

from __future__ import annotations

import json
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
    """Appends one JSON record per round to ``metrics.jsonl`` and flushes it (crash-safe)."""

    def start(self, info: RunInfo) -> None:  # noqa: D102
        info.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = info.output_dir / METRICS_FILE
        self.path.write_text("")

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
