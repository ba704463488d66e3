"""Where a run's results go: console, local files, plot, model checkpoint, W&B."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from fl_iot.tracking.base import History, RunInfo, Sink, jsonable
from fl_iot.tracking.console import ConsoleSink
from fl_iot.tracking.files import CheckpointSink, JsonlSink, SummarySink
from fl_iot.tracking.plot import PlotSink
from fl_iot.tracking.summary import package_versions, summarize

__all__ = [
    "SINK_FACTORIES",
    "History",
    "RunInfo",
    "Sink",
    "build_sinks",
    "jsonable",
    "package_versions",
    "summarize",
]


def _wandb_sink(cfg: DictConfig) -> Sink:
    from fl_iot.tracking.wandb_sink import WandbSink  # wandb is heavy: import only when asked

    settings = cfg.tracking.wandb
    return WandbSink(
        settings.project, settings.entity, settings.mode, settings.group, list(settings.tags)
    )


SINK_FACTORIES: dict[str, Callable[[DictConfig], Sink]] = {
    "console": lambda cfg: ConsoleSink(),
    "jsonl": lambda cfg: JsonlSink(),
    "summary": lambda cfg: SummarySink(),
    "plot": lambda cfg: PlotSink(),
    "checkpoint": lambda cfg: CheckpointSink(),
    "wandb": _wandb_sink,
}
"""Sink builders by the name used in ``tracking.sinks``."""


def build_sinks(cfg: DictConfig, info: RunInfo) -> list[Sink]:
    """The sinks named in ``cfg.tracking.sinks``, in that order."""
    return [SINK_FACTORIES[name](cfg) for name in cfg.tracking.sinks]
