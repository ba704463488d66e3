"""The server side of a run: build everything from the config, take the roll call, run rounds.

:func:`run_server` is what the ServerApp's ``@app.main()`` calls, under the Simulation Engine and
under the Deployment Engine alike.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fl_iot.budgets import check_device_memory
from fl_iot.checkpoint import (
    RandomStates,
    ServerCheckpoint,
    clear_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from fl_iot.config import devices_per_round, to_container
from fl_iot.device_runtime import RunContext, fresh_model, run_context
from fl_iot.errors import ConfigError
from fl_iot.fleet import build_fleet
from fl_iot.gateway_aggregation import GatewayAggregation
from fl_iot.gateway_grid import GatewayGrid, gateway_roster
from fl_iot.gateways import GatewayMode, gateway_assignment, gateway_mode
from fl_iot.metrics import evaluate_model, scores
from fl_iot.models import count_parameters
from fl_iot.records import RoundRecord, RunStatus, RunSummary
from fl_iot.roster import Roster, RosterError, device_roster, take_roll_call
from fl_iot.round_loop import CentralEvaluation, RoundLoop
from fl_iot.rounds import RoundsConfig
from fl_iot.schedule import RoundScheduler
from fl_iot.tracking import History, RunInfo, build_sinks, package_versions, summarize
from strategies.central_dp import CentralDP

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run hands back to its caller (the CLI returns ``summary`` to Hydra)."""

    summary: RunSummary | None = None
    arrays: ArrayRecord | None = None


def build_strategy(cfg: DictConfig) -> Strategy:
    """Instantiate ``cfg.strategy`` (any importable ``Strategy`` via ``_target_``).

    With ``privacy.central.noise_multiplier`` set, the strategy is wrapped in server-side DP
    (:class:`strategies.central_dp.CentralDP`), the outermost layer.
    """
    strategy = instantiate(cfg.strategy)
    if not isinstance(strategy, Strategy):
        raise TypeError(
            f"strategy._target_={cfg.strategy.get('_target_')!r} built a "
            f"{type(strategy).__name__}, not a flwr.serverapp.strategy.Strategy"
        )
    central = cfg.privacy.central
    if central.noise_multiplier is None:
        return strategy
    try:
        return CentralDP(
            strategy,
            noise_multiplier=central.noise_multiplier,
            clipping_norm=central.clipping_norm,
            num_sampled_devices=devices_per_round(cfg),
            num_devices=cfg.scenario.num_devices,
            delta=central.delta,
            max_weight_ratio=central.max_weight_ratio,
            seed=cfg.seed,
        )
    except ValueError as refusal:  # what it cannot wrap, or a value out of range
        raise ConfigError(str(refusal)) from None


def give_roster(strategy: Strategy, roster: Roster) -> None:
    """Tell a strategy which device each node is, if it asks (``set_roster``).

    fl-iot's strategies key devices by the roll call's ``{node_id: device_id}`` instead of the
    device id a reply claims, so a node cannot speak for another device. Flower's own
    strategies have no ``set_roster`` and key nothing by device.
    """
    setter = getattr(strategy, "set_roster", None)
    if callable(setter):
        setter(roster.device_keys())


def build_scheduler(run: RunContext, roster: Roster) -> RoundScheduler:
    """The fleet on its simulated clock and the round mode (``cfg.fleet``, ``cfg.rounds``)."""
    federation = run.federation
    fleet = build_fleet(
        run.cfg,
        [federation[d].device_class for d in range(len(federation))],
        list(run.data.local_train_sizes),
    )
    # The run's config is plain (run_context re-creates it from YAML): merge it into the schema.
    rounds = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(RoundsConfig), run.cfg.rounds)
    )
    assert isinstance(rounds, RoundsConfig)
    return RoundScheduler(fleet, rounds, roster, int(run.cfg.seed))


def raw_data_baseline(run: RunContext) -> dict[str, Any]:
    """What shipping the training data itself would cost: once, and as the sensors stream.

    From the dataset's :class:`~fl_iot.data.RawData` and each device's local training split;
    empty for a dataset that does not say what its sensors produce.
    """
    raw = run.data.info.raw
    if raw is None:
        return {}
    by_class: dict[str, float] = {}
    for device, examples in enumerate(run.data.local_train_sizes):
        name = run.federation[device].device_class
        by_class[name] = by_class.get(name, 0.0) + examples * raw.bytes_per_example
    return {
        "bytes_once": sum(by_class.values()),
        "bytes_once_by_class": by_class,
        "bytes_per_second_per_device": raw.bytes_per_second,
        "devices": len(run.federation),
        "basis": raw.basis,
    }


def connect_devices(grid: Grid, run: RunContext, timeout_s: float) -> tuple[Grid, Roster]:
    """Take the roll call; the grid and roster the rounds address devices through.

    Without gateways every node is one device and the grid is Flower's. Behind gateways
    (:mod:`fl_iot.gateways`) the rounds get a :class:`~fl_iot.gateway_grid.GatewayGrid` that
    addresses each device as a node of its own.

    Raises
    ------
    RosterError
        When nodes are missing, or answer as gateways in a run without them (or the reverse).
    """
    num_nodes = len(run.federation) if run.gateways is None else len(run.gateways)
    mapping = take_roll_call(grid, len(run.federation), timeout_s, num_nodes=num_nodes)
    if run.gateways is None:
        if any(len(devices) != 1 for devices in mapping.values()):
            raise RosterError(
                "a node answered the roll call for several devices, but the run has no "
                "gateways (set gateways.devices_per_gateway or gateways.assignment)"
            )
        return grid, device_roster(mapping)
    return GatewayGrid(grid, mapping), gateway_roster(mapping)


def participants_of(strategy: Strategy, cfg: DictConfig) -> Strategy:
    """The strategy the rounds drive: ``strategy`` itself, or per gateway in aggregate mode.

    With ``gateways.mode=aggregate`` the gateways are the strategy's participants
    (:class:`~fl_iot.gateway_aggregation.GatewayAggregation`); the checkpoint keeps ``strategy``
    itself, whose state is all there is.
    """
    if gateway_mode(cfg) is not GatewayMode.AGGREGATE:
        return strategy
    assignment = gateway_assignment(cfg)
    assert assignment is not None  # gateway_mode refuses aggregate without gateways
    # Gateway g is the config's: the g-th of gateways.assignment or of devices_per_gateway.
    return GatewayAggregation(
        strategy,
        dict(enumerate(assignment)),
        device_fraction=float(OmegaConf.select(cfg, "gateways.device_fraction", default=1.0)),
        seed=int(cfg.seed),
    )


def initial_arrays(run: RunContext) -> ArrayRecord:
    """The seeded initial global model."""
    torch.manual_seed(run.cfg.seed)
    return ArrayRecord(fresh_model(run).state_dict())


def central_evaluator(run: RunContext) -> CentralEvaluation:
    """Evaluate the global model on the dataset's central held-out split."""
    test = run.data.central_test
    num_classes = run.data.info.num_classes

    def evaluate(server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        loss, confusion = evaluate_model(fresh_model(run, arrays), test, num_classes)
        return {**scores(confusion), "loss": loss}

    return evaluate


def run_server(
    grid: Grid,
    cfg: DictConfig,
    output_dir: Path,
    result: RunResult | None = None,
    resume: bool = False,
    server_data: Path | None = None,
) -> RunResult:
    """Run the study of ``cfg`` over ``grid`` and write its results to ``output_dir``.

    A checkpoint is written to ``output_dir`` after every round (:mod:`fl_iot.checkpoint`). With
    ``resume``, the run continues from that checkpoint instead of starting afresh: the strategy,
    model, scheduler, records and random states are the checkpoint's, the sinks continue their
    files (:meth:`fl_iot.tracking.Sink.resume`), and the rounds after the checkpoint's run as
    they would have without the interruption. A fresh start removes an earlier checkpoint.

    With ``server_data`` (the run-config's ``server-data``) the server reads only its share of
    the exported data (:func:`fl_iot.data.read_server_share`): the central test split and
    every device's sizes, no device's samples.
    """
    started = time.perf_counter()
    result = result if result is not None else RunResult()
    torch.set_num_threads(1)
    run = run_context(cfg, server_data=server_data)
    check_device_memory(run)
    checkpoint = read_checkpoint(output_dir) if resume else None
    if checkpoint is None:
        clear_checkpoint(output_dir)
        strategy = build_strategy(cfg)
        arrays = initial_arrays(run)
    else:
        strategy, arrays = checkpoint.strategy, checkpoint.arrays
        log.info(
            "resuming %s after round %d of %d",
            output_dir,
            checkpoint.round,
            cfg.scenario.num_rounds,
        )
    info = RunInfo(
        config=to_container(cfg),
        output_dir=output_dir,
        dataset={
            "name": run.data.info.name,
            "description": run.data.info.description,
            "synthetic": run.data.info.synthetic,
            "classes": list(run.data.info.class_names),
            "input_shape": list(run.data.info.input_shape),
            "train_samples": run.data.info.train_samples,
            "central_test_samples": run.data.info.central_test_samples,
        },
        federation={
            "num_devices": len(run.federation),
            "device_classes": run.federation.class_counts(),
            "attackers": sorted(run.federation.attackers),
            "samples_per_device": list(run.data.partition_sizes),
        },
        model_parameters=count_parameters(fresh_model(run)),
        versions=package_versions(),
        raw_data=raw_data_baseline(run),
    )
    history = History()
    sinks = [history, *build_sinks(cfg, info)]
    for sink in sinks:
        if checkpoint is None:
            sink.start(info)
        else:
            sink.resume(info, checkpoint.records)
    status, error_text = RunStatus.COMPLETED, ""
    central = central_evaluator(run) if cfg.scenario.central_evaluation else None
    initial: dict[str, float] = {}
    try:
        grid, roster = connect_devices(grid, run, cfg.engine.roll_call_timeout_s)
        rounds_strategy = participants_of(strategy, cfg)
        give_roster(rounds_strategy, roster)
        scheduler = build_scheduler(run, roster)
        if checkpoint is not None:
            scheduler.restore(checkpoint.scheduler)
            initial = checkpoint.initial_central
            checkpoint.random_states.restore()
        elif central is not None:
            initial = central(0, arrays)

        def save_checkpoint(record: RoundRecord, arrays: ArrayRecord) -> None:
            write_checkpoint(
                output_dir,
                ServerCheckpoint(
                    round=record.round,
                    config=info.config,
                    arrays=arrays,
                    strategy=strategy,
                    scheduler=scheduler.state(),
                    records=list(history.records),
                    initial_central=initial,
                    elapsed_s=record.elapsed_s,
                    random_states=RandomStates.capture(),
                ),
            )

        setup_s = time.perf_counter() - started
        loop = RoundLoop(
            grid=grid,
            strategy=rounds_strategy,
            roster=roster,
            federation=run.federation,
            num_rounds=cfg.scenario.num_rounds,
            seed=cfg.seed,
            num_classes=run.data.info.num_classes,
            round_timeout_s=cfg.engine.round_timeout_s,
            central_evaluation=central,
            sinks=sinks,
            scheduler=scheduler,
            after_round=save_checkpoint,
            compression=run.compression,
            downlink=run.downlink,
        )
        rounds_started = time.perf_counter()
        if checkpoint is None:
            arrays = loop.run(arrays)
        else:
            arrays = loop.run(arrays, checkpoint.round + 1, checkpoint.elapsed_s)
        timings = {
            "setup_s": setup_s,
            "rounds_s": time.perf_counter() - rounds_started,
            "server_total_s": time.perf_counter() - started,
        }
    except BaseException as error:
        status, error_text = RunStatus.FAILED, f"{type(error).__name__}: {error}"
        timings = {"server_total_s": time.perf_counter() - started}
        raise
    finally:
        summary = summarize(info, history.records, status, error_text, timings, initial)
        for sink in sinks:
            sink.finish(summary, arrays)
        result.summary, result.arrays = summary, arrays
    return result
