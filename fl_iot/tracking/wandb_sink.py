"""Weights & Biases tracking: config at start, metrics per round, summary at the end.

Runs offline unless the user configured online use (``tracking.wandb.mode=online`` and a logged-in
``wandb``); offline runs can be uploaded later with ``wandb sync <run dir>/wandb/offline-run-*``.
Multirun jobs share a W&B group (the sweep directory's name unless ``tracking.wandb.group`` is set).
A resumed run (``fl-iot resume=<run dir>``) continues the same W&B run: its id is kept in the run
directory's ``wandb-run-id``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from fl_iot.records import RoundRecord, RunStatus, RunSummary
from fl_iot.tracking.base import RunInfo, Sink, jsonable

RUN_ID_FILE = "wandb-run-id"


class WandbSink(Sink):
    """Logs a run to W&B; ``wandb`` is imported only when this sink is used."""

    def __init__(
        self, project: str, entity: str | None, mode: str, group: str | None, tags: list[str]
    ) -> None:
        self.project, self.entity, self.mode, self.group = project, entity, mode, group
        self.tags = list(tags)
        self.run: Any = None

    def start(self, info: RunInfo) -> None:  # noqa: D102
        self._init(info, resume=False)

    def resume(self, info: RunInfo, records: Sequence[RoundRecord]) -> None:  # noqa: D102
        self._init(info, resume=True)

    def _init(self, info: RunInfo, resume: bool) -> None:
        try:
            import wandb
        except ImportError as error:  # pragma: no cover - wandb is a dependency of fl-iot
            raise ImportError(
                "tracking=wandb needs the wandb package: pip install wandb"
            ) from error
        info.output_dir.mkdir(parents=True, exist_ok=True)
        id_file = Path(info.output_dir) / RUN_ID_FILE
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else ""
        if not run_id:
            run_id = secrets.token_hex(6)
            id_file.write_text(run_id + "\n")
        scenario = info.config["scenario"]["name"]
        strategy = str(info.config["strategy"].get("_target_", "?")).rsplit(".", 1)[-1]
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            mode=self.mode,  # type: ignore[arg-type]  # validated against WANDB_MODES
            group=self.group,
            tags=self.tags,
            name=f"{scenario}-{strategy}-seed{info.config.get('seed')}",
            dir=str(info.output_dir),
            config=jsonable(info.config),
            reinit="finish_previous",
            id=run_id,
            resume="allow",
        )
        self.run.config.update(
            {"dataset_info": jsonable(info.dataset), "federation_info": jsonable(info.federation)},
            allow_val_change=True,
        )

    def log_round(self, record: RoundRecord) -> None:  # noqa: D102
        self.run.log(round_metrics(record), step=record.round)

    def finish(self, summary: RunSummary, arrays: ArrayRecord | None) -> None:  # noqa: D102
        if self.run is None:
            return
        final = summary.final
        for part, values in (
            ("central", final.central),
            ("federated", final.federated),
            ("train", final.train),
        ):
            for key, value in values.items():
                self.run.summary[f"final/{part}/{key}"] = value
        for part, values in (("detection", summary.detection), ("privacy", summary.privacy)):
            for key, value in values.items():
                self.run.summary[f"{part}/{key}"] = value
        self.run.summary["status"] = str(summary.status)
        self.run.summary["rounds_completed"] = summary.rounds_completed
        self.run.finish(exit_code=0 if summary.status == RunStatus.COMPLETED else 1)
        self.run = None


def round_metrics(record: RoundRecord) -> dict[str, float]:
    """The flat scalar metrics of one round, keyed ``<part>/<name>``."""
    metrics: dict[str, float] = {"round_time_s": record.round_time_s, "elapsed_s": record.elapsed_s}
    for part in ("central", "federated", "train", "detection", "privacy", "fleet", "communication"):
        for key, value in getattr(record, part).items():
            metrics[f"{part}/{key}"] = value
    for key in ("sampled", "replied", "failed", "declined", "missing"):
        metrics[f"clients/{key}"] = getattr(record, key)
    for device_class, values in record.by_class.items():
        for key, value in values.items():
            metrics[f"class/{device_class}/{key}"] = value
    return {k: v for k, v in jsonable(metrics).items() if v is not None}
