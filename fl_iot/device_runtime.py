"""What a device does when a message reaches it: train or evaluate the global model locally.

The ClientApp is a thin Flower shell around these functions; they take the composed config and
the node's context and return reply records, so they are testable without Flower's runtime.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.common.constant import SType
from omegaconf import DictConfig, OmegaConf
from torch import nn

from clients import TRAINERS, Attack, AttackContext, LocalTrainer, TrainSettings, build_attack
from clients.compression import Compression
from clients.gateway import Aggregation
from clients.trainer import TrainReport
from fl_iot import protocol as P
from fl_iot.compression import compression_by_class, downlink_compression
from fl_iot.config import (
    attackers_per_round,
    devices_per_round,
    privacy_profile_of,
    trainer_of,
)
from fl_iot.data import (
    PartitionSpec,
    RunData,
    load_federated_data,
    read_device_exports,
    read_server_share,
)
from fl_iot.federation import Device, Federation, build_federation
from fl_iot.gateways import Assignment, gateway_aggregation, gateway_assignment, message_budget
from fl_iot.metrics import evaluate_model
from fl_iot.models import model_factory
from fl_iot.run_config import SERVER_DATA_KEY

log = logging.getLogger(__name__)


class TrainingDeclinedError(RuntimeError):
    """The device's trainer refused this round (for example, its privacy budget is spent)."""


class WentOfflineError(RuntimeError):
    """The simulated device went offline partway through its training (:data:`P.CUTOFF_STEPS`)."""


PARTIAL_ARRAYS = "fleet.partial-update"
PARTIAL_INFO = "fleet.partial-update-info"
"""Keys of the partial update a device keeps in its state after going offline mid-training."""


@dataclass(frozen=True)
class DeviceClassRuntime:
    """A device class's settings, read from the config once per process rather than per message."""

    trainer: type[LocalTrainer]
    trainer_options: dict[str, Any]
    settings: TrainSettings  # the per-round seed and proximal term are filled in per message
    relative_speed: float


@dataclass(frozen=True)
class RunContext:
    """Everything derived from the config that every device of a run shares."""

    cfg: DictConfig
    data: RunData  # the whole partitioned dataset, or the share exported for this node
    federation: Federation
    model_factory: Callable[..., nn.Module]
    device_classes: dict[str, DeviceClassRuntime]
    compression: dict[str, Compression | None]  # each device class's codec (None: uncompressed)
    downlink: Compression | None  # the global model's codec on the way down
    gateways: Assignment | None  # each gateway's devices; None: one node per device
    aggregation: Aggregation | None  # what an aggregating gateway does; None: it relays
    message_budget_s: float | None  # a gateway's wall-time budget per message; None: no limit
    run_key: str  # a digest of the resolved config: names this run in in-process caches
    seed: int  # cfg.seed, read once (a DictConfig look-up costs ~0.05 ms, twice per device)


DATA_PATH_KEY = "data-path"
"""Node-config key of the directory holding the device's own exported data (``fl-iot-export``)."""

_BY_IDENTITY: dict[tuple[int, Path | None, Path | None], tuple[DictConfig, RunContext]] = {}


def run_context(
    cfg: DictConfig, device_data: Path | None = None, server_data: Path | None = None
) -> RunContext:
    """Load (once per process) the data and federation of the run described by ``cfg``.

    Without ``device_data`` or ``server_data`` the whole dataset is loaded and partitioned
    (:func:`fl_iot.data.load_federated_data`), as in simulation. With ``device_data`` (a node's
    ``data-path``) only the device export(s) there are read, and with ``server_data`` (the
    ServerApp's ``server-data``) only the server's share (:mod:`fl_iot.data.export`); either is
    checked to be this run's partition (:class:`~fl_iot.data.PartitionSpec`).

    Called for every message, so the common case (the same config object again: the apps hold
    it in a closure or a cache) is a dict look-up; serialising the config to recognise an equal
    but new object costs tens of milliseconds.

    Raises
    ------
    fl_iot.data.ExportedDataError
        When the export is missing, malformed or made for another partition.
    """
    key = (id(cfg), device_data, server_data)
    known = _BY_IDENTITY.get(key)
    if known is not None and known[0] is cfg:
        return known[1]
    context = _run_context_cached(OmegaConf.to_yaml(cfg, resolve=True), device_data, server_data)
    if len(_BY_IDENTITY) >= 8:
        _BY_IDENTITY.clear()
    _BY_IDENTITY[key] = (cfg, context)  # keeps cfg alive, so its id is not reused
    return context


def partition_spec(cfg: DictConfig) -> PartitionSpec:
    """What decides the run's partition: its dataset config, number of devices and seed."""
    dataset: dict[str, Any] = OmegaConf.to_container(cfg.scenario.dataset, resolve=True)  # type: ignore[assignment]
    return PartitionSpec(dataset, cfg.scenario.num_devices, int(cfg.seed))


def _run_data(cfg: DictConfig, device_data: Path | None, server_data: Path | None) -> RunData:
    spec = partition_spec(cfg)
    if device_data is not None:
        return read_device_exports(device_data, spec, f"node-config {DATA_PATH_KEY}={device_data}")
    if server_data is not None:
        return read_server_share(server_data, spec, f"run-config {SERVER_DATA_KEY}={server_data}")
    return load_federated_data(dict(spec.dataset), spec.num_devices, spec.seed)


@lru_cache(maxsize=4)
def _run_context_cached(
    cfg_yaml: str, device_data: Path | None, server_data: Path | None
) -> RunContext:
    cfg = OmegaConf.create(cfg_yaml)
    assert isinstance(cfg, DictConfig)
    data = _run_data(cfg, device_data, server_data)
    federation = build_federation(
        data.natural_keys,
        dict(cfg.scenario.device_mix),
        cfg.attack.fraction,
        cfg.seed,
    )
    return RunContext(
        cfg=cfg,
        data=data,
        federation=federation,
        model_factory=model_factory(cfg.scenario.model),
        device_classes={name: _device_class_runtime(cfg, name) for name in cfg.device_classes},
        compression=compression_by_class(cfg),
        downlink=downlink_compression(cfg),
        gateways=gateway_assignment(cfg),
        aggregation=gateway_aggregation(cfg),
        message_budget_s=message_budget(cfg),
        run_key=hashlib.sha256(cfg_yaml.encode()).hexdigest(),
        seed=int(cfg.seed),
    )


def _device_class_runtime(cfg: DictConfig, name: str) -> DeviceClassRuntime:
    device_class = cfg.device_classes[name]
    optimizer = cfg.scenario.optimizer
    options: dict[str, Any] = OmegaConf.to_container(device_class.trainer_options, resolve=True)  # type: ignore[assignment]
    return DeviceClassRuntime(
        trainer=TRAINERS.get(trainer_of(cfg, name)),
        trainer_options=options,
        settings=TrainSettings(
            local_epochs=device_class.local_epochs,
            max_steps=device_class.max_steps,
            batch_size=device_class.batch_size,
            learning_rate=optimizer.learning_rate,
            momentum=optimizer.momentum,
            weight_decay=optimizer.weight_decay,
            planned_rounds=cfg.scenario.num_rounds,
            # What Flower's sampler really achieves: min_train_devices can lift it above the
            # fraction.
            participation=devices_per_round(cfg) / cfg.scenario.num_devices,
            privacy=privacy_profile_of(cfg, name),
        ),
        relative_speed=float(device_class.relative_speed),
    )


def device_id_of(context: Context) -> int:
    """The device a node serves: ``device-id`` in deployment, ``partition-id`` in simulation."""
    node_config = context.node_config
    for key in ("device-id", "partition-id"):
        if key in node_config:
            return int(node_config[key])
    raise KeyError(
        "node_config has neither 'device-id' nor 'partition-id'; start the SuperNode with "
        '--node-config "device-id=<n>"'
    )


def devices_served(context: Context, run: RunContext) -> tuple[int, ...] | None:
    """The devices a gateway node serves, or ``None`` for a node that is one device.

    A gateway's index is ``gateway-id`` in its node config on the Deployment Engine and its
    ``partition-id`` in simulation.
    """
    if run.gateways is None:
        return None
    node_config = context.node_config
    for key in ("gateway-id", "partition-id"):
        if key in node_config:
            gateway = int(node_config[key])
            if not 0 <= gateway < len(run.gateways):
                raise KeyError(
                    f"{key}={gateway} names no gateway: the run has {len(run.gateways)} "
                    f"(0..{len(run.gateways) - 1})"
                )
            return run.gateways[gateway]
    raise KeyError(
        "the run has gateways but node_config has no 'gateway-id'; start the SuperNode with "
        '--node-config "gateway-id=<n>"'
    )


def data_path_of(context: Context) -> Path | None:
    """The node's own exported data (node-config ``data-path``), or ``None`` to load it all.

    One device's export directory, or, on a gateway, a directory of its devices'
    ``device-<n>/`` exports.
    """
    value = str(context.node_config.get(DATA_PATH_KEY) or "")
    return Path(value).expanduser() if value else None


def device_seed(seed: int, device_id: int, server_round: int) -> int:
    """A seed for one device in one round, independent across devices and rounds."""
    return int(np.random.SeedSequence([seed, device_id, server_round]).generate_state(1)[0])


def fresh_model(run: RunContext, arrays: ArrayRecord | None = None) -> nn.Module:
    """The scenario's model, loaded with ``arrays`` when given."""
    model = run.model_factory(
        input_shape=run.data.info.input_shape, num_classes=run.data.info.num_classes
    )
    if arrays is not None:
        model.load_state_dict(torch_state_of(arrays))
    return model


_TRAINING_MODELS: dict[str, tuple[nn.Module, dict[str, torch.Tensor]]] = {}


def training_model(run: RunContext, arrays: ArrayRecord, trainer: type[LocalTrainer]) -> nn.Module:
    """The module ``trainer`` trains on a device: the process's one, or a new one.

    A trainer that declares :attr:`~clients.trainer.LocalTrainer.reuses_model` gets one module
    per run and process, loaded with ``arrays`` (parameters and buffers alike) for each device;
    any other gets a fresh module.
    """
    if not trainer.reuses_model:
        return fresh_model(run, arrays)
    kept = _TRAINING_MODELS.get(run.run_key)
    if kept is None:
        if len(_TRAINING_MODELS) >= 4:
            _TRAINING_MODELS.clear()
        model = fresh_model(run)
        kept = _TRAINING_MODELS[run.run_key] = (model, model.state_dict(keep_vars=True))
    model, tensors = kept
    state = torch_state_of(arrays)
    if state.keys() != tensors.keys():
        model.load_state_dict(state)  # says which key is missing or unexpected
        return model
    # What load_state_dict does for matching keys (a copy into each parameter and buffer, no
    # gradient), without its per-call checks and hooks: a tenth of a small device's round.
    with torch.no_grad():
        for key, tensor in tensors.items():
            tensor.copy_(state[key])
    return model


_LAST_STATE: list[tuple[ArrayRecord, tuple[Any, ...], dict[str, torch.Tensor]]] = []


def torch_state_of(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """``arrays`` as a torch state dict, converted once for the devices that share it.

    A gateway's devices of a round all receive the same global model (one record object); the
    last conversion is kept with the record and its arrays, and used again only while the
    record holds the very same array objects (an array set into it is another object). The
    tensors are only ever copied from (``load_state_dict``), never written.
    """
    contents = tuple((key, array) for key, array in arrays.items())
    if _LAST_STATE and _LAST_STATE[0][0] is arrays and _same(_LAST_STATE[0][1], contents):
        return _LAST_STATE[0][2]
    state = arrays.to_torch_state_dict()
    _LAST_STATE[:] = [(arrays, contents, state)]
    return state


def _same(kept: tuple[Any, ...], contents: tuple[Any, ...]) -> bool:
    """Whether two ``(key, array)`` listings name the same array objects, in order."""
    return len(kept) == len(contents) and all(
        a[0] == b[0] and a[1] is b[1] for a, b in zip(kept, contents, strict=True)
    )


def seed_torch(seed: int) -> None:
    """Seed torch's CPU generator, the one fl-iot's training draws from.

    Not ``torch.manual_seed``: it also queues a lazy CUDA seeding that records a stack trace,
    some 0.1-1 ms a call (a tenth of a small device's round in a Ray worker); fl-iot trains on
    the CPU, where both give the same numbers.
    """
    torch.default_generator.manual_seed(seed)


def train_settings(
    run: RunContext, device: Device, server_round: int, config: ConfigRecord
) -> TrainSettings:
    """The local training settings of ``device``: its class budget plus the scenario optimiser.

    A simulated cut-off (:data:`P.CUTOFF_STEPS`) lowers the step budget to the steps the device
    completes before it goes offline.
    """
    settings = replace(
        run.device_classes[device.device_class].settings,
        proximal_mu=float(config.get(P.PROXIMAL_MU, 0.0)),  # type: ignore[arg-type]
        seed=device_seed(run.seed, device.device_id, server_round),
    )
    cutoff = config.get(P.CUTOFF_STEPS)
    if isinstance(cutoff, int) and not isinstance(cutoff, bool):
        budget = settings.max_steps if settings.max_steps is not None else cutoff
        settings = replace(settings, max_steps=max(0, min(budget, cutoff)))
    return settings


def attack_of(run: RunContext, device: Device) -> Attack | None:
    """The attack this device runs, or ``None`` for an honest device."""
    if not device.attacker:
        return None
    options: dict[str, Any] = OmegaConf.to_container(run.cfg.attack.options, resolve=True)  # type: ignore[assignment]
    return build_attack(run.cfg.attack.name, options)


def local_update(
    run: RunContext,
    device: Device,
    global_arrays: ArrayRecord,
    config: ConfigRecord,
    state: RecordDict,
    attack: Attack | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[dict[str, np.ndarray], TrainReport]:
    """Train ``global_arrays`` on ``device``'s data (poisoned first by ``attack``, if any).

    Sends nothing, so a colluding attacker can call it for any device of the federation.

    Raises
    ------
    TrainingDeclinedError
        When the device's trainer refuses the round.
    """
    server_round = int(config.get(P.SERVER_ROUND, 0))  # type: ignore[arg-type]
    settings = train_settings(run, device, server_round, config)
    local_train, _ = run.data.device_split(device.device_id)
    if attack is not None:
        rng = rng if rng is not None else np.random.default_rng(settings.seed)
        local_train = attack.poison_data(local_train, run.data.info.num_classes, rng)

    device_class = run.device_classes[device.device_class]
    model = training_model(run, global_arrays, device_class.trainer)
    seed_torch(settings.seed)
    trainer = device_class.trainer(**device_class.trainer_options)
    report = trainer.train(model, local_train, settings, state)
    if report.declined is not None:
        raise TrainingDeclinedError(
            f"device {device.device_id} ({device.device_class}): {report.declined}"
        )
    # Copies: the module may be trained again for the next device (training_model).
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}, report


def attack_context(
    run: RunContext, device: Device, global_arrays: ArrayRecord, config: ConfigRecord
) -> AttackContext:
    """What an attacker knows this round: the colluders, ``n`` and ``f``, and their training."""

    def honest_update_of(device_id: int) -> dict[str, np.ndarray]:
        # A fresh state: every colluder reconstructs the same update, wherever it runs.
        local, _ = local_update(run, run.federation[device_id], global_arrays, config, RecordDict())
        return local

    return AttackContext(
        device_id=device.device_id,
        server_round=int(config.get(P.SERVER_ROUND, 0)),  # type: ignore[arg-type]
        colluders=tuple(sorted(run.federation.attackers)),
        num_sampled=devices_per_round(run.cfg),
        num_attackers=attackers_per_round(_root_=run.cfg),
        run_key=run.run_key,
        honest_update_of=honest_update_of,
    )


def train_on_device(
    cfg: DictConfig,
    device_id: int,
    content: RecordDict,
    state: RecordDict,
    device_data: Path | None = None,
) -> RecordDict:
    """Train the received global model on the device's local data and build the reply.

    ``device_data`` is the node's exported data (:func:`data_path_of`); ``None`` loads the
    whole dataset (:func:`run_context`). A colluding attacker trains its colluders' honest
    updates, so on a node that holds only its own data a collusion attack fails (it needs their
    data).

    Raises
    ------
    TrainingDeclinedError
        When the device's trainer refuses the round; the ClientApp turns it into an error reply.
    """
    torch.set_num_threads(1)  # one thread per client process: see perf-baseline.md §1
    run = run_context(cfg, device_data)
    device = run.federation[device_id]
    global_arrays: ArrayRecord = content[P.ARRAYS]  # type: ignore[assignment]
    config: ConfigRecord = content.get(P.CONFIG, ConfigRecord())  # type: ignore[assignment]
    server_round = int(config.get(P.SERVER_ROUND, 0))  # type: ignore[arg-type]
    partial = take_partial_update(state)
    if partial is not None and config.get(P.PARTIAL_UPDATES) == "use":
        return RecordDict({**partial, P.DEVICE: device_record(device)})
    attack = attack_of(run, device)
    rng = np.random.default_rng(device_seed(run.seed, device_id, server_round))
    local, report = local_update(run, device, global_arrays, config, state, attack, rng)

    num_examples = report.num_examples
    if attack is not None:
        attacked = attack.poison_update(
            {k: np.asarray(v.numpy()) for k, v in global_arrays.items()},
            local,
            num_examples,
            rng,
            attack_context(run, device, global_arrays, config),
        )
        local, num_examples = attacked.arrays, attacked.num_examples
    relative_speed = run.device_classes[device.device_class].relative_speed
    cutoff = config.get(P.CUTOFF_STEPS)
    if isinstance(cutoff, int) and not isinstance(cutoff, bool):
        keep_partial_update(state, local, num_examples, report, server_round, relative_speed)
        raise WentOfflineError(
            f"device {device_id} went offline after {report.steps} of its local steps"
        )
    metrics: dict[str, Any] = {
        P.NUM_EXAMPLES: num_examples,
        P.TRAIN_LOSS: report.loss,
        P.TRAIN_STEPS: report.steps,
        P.WALL_TIME: report.wall_time_s,
        P.COMPUTE_TIME: report.wall_time_s / relative_speed,
    }
    records: dict[str, Any] = {
        P.ARRAYS: ArrayRecord({k: numpy_array(np.asarray(v)) for k, v in local.items()}),
        P.METRICS: MetricRecord(metrics),
    }
    if report.metrics:  # an empty record still costs ~170 bytes on the wire
        records[P.TRAINER] = ConfigRecord({k: float(v) for k, v in report.metrics.items()})
    return RecordDict({**records, P.DEVICE: device_record(device)})


_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def numpy_array(ndarray: np.ndarray) -> Array:
    """Flower's ``Array`` of ``ndarray``, byte for byte ``Array(ndarray)``, faster.

    Flower writes every array with ``np.save``, whose ``.npy`` header depends only on the
    dtype and shape (and memory order); the header is written once per layout and kept, and an
    array of that layout is its header followed by its bytes. Anything but a C-ordered array of
    a plain dtype goes through Flower.
    """
    if not ndarray.flags.c_contiguous or ndarray.dtype.hasobject:
        return Array(ndarray)
    key = (ndarray.dtype.str, tuple(ndarray.shape))
    header = _NPY_HEADERS.get(key)
    if header is None:
        flowers = Array(ndarray)
        _NPY_HEADERS[key] = flowers.data[: len(flowers.data) - ndarray.nbytes]
        return flowers
    data = header + ndarray.tobytes()
    return Array(dtype=str(ndarray.dtype), shape=key[1], stype=SType.NUMPY, data=data)


def keep_partial_update(
    state: RecordDict,
    arrays: dict[str, np.ndarray],
    num_examples: int,
    report: TrainReport,
    server_round: int,
    relative_speed: float,
) -> None:
    """Keep a partial update in the device's state, to offer when it is next asked."""
    state[PARTIAL_ARRAYS] = ArrayRecord({k: numpy_array(np.asarray(v)) for k, v in arrays.items()})
    state[PARTIAL_INFO] = MetricRecord(
        {
            P.NUM_EXAMPLES: num_examples,
            P.TRAIN_LOSS: report.loss if np.isfinite(report.loss) else 0.0,
            P.TRAIN_STEPS: report.steps,
            P.WALL_TIME: report.wall_time_s,
            P.COMPUTE_TIME: report.wall_time_s / relative_speed,
            P.BASE_ROUND: server_round,
        }
    )


def take_partial_update(state: RecordDict) -> RecordDict | None:
    """The reply records of the kept partial update (removed from the state), or ``None``."""
    if PARTIAL_ARRAYS not in state or PARTIAL_INFO not in state:
        return None
    arrays = state.pop(PARTIAL_ARRAYS)
    info = state.pop(PARTIAL_INFO)
    assert isinstance(arrays, ArrayRecord) and isinstance(info, MetricRecord)
    values = dict(info.items())
    base_round = int(values.pop(P.BASE_ROUND))  # type: ignore[arg-type]
    return RecordDict(
        {
            P.ARRAYS: arrays,
            P.METRICS: MetricRecord(values),
            P.UPDATE: ConfigRecord(
                {P.BASE_ROUND: base_round, P.PARTIAL_STEPS: int(values[P.TRAIN_STEPS])}  # type: ignore[arg-type]
            ),
        }
    )


def evaluate_on_device(
    cfg: DictConfig, device_id: int, content: RecordDict, device_data: Path | None = None
) -> RecordDict:
    """Evaluate the received global model on the device's local test split.

    ``device_data`` as for :func:`train_on_device`.
    """
    torch.set_num_threads(1)
    run = run_context(cfg, device_data)
    device = run.federation[device_id]
    _, local_test = run.data.device_split(device_id)
    model = fresh_model(run, content[P.ARRAYS])  # type: ignore[arg-type]
    loss, confusion = evaluate_model(model, local_test, run.data.info.num_classes)
    return RecordDict(
        {
            P.METRICS: MetricRecord(
                {
                    P.NUM_EXAMPLES: len(local_test),
                    P.EVAL_LOSS: 0.0 if np.isnan(loss) else loss,
                    P.CONFUSION: [int(c) for c in confusion.ravel()],
                }
            ),
            P.DEVICE: device_record(device),
        }
    )


def device_record(device: Device) -> ConfigRecord:
    """The identity a device attaches to each reply: its id (the server knows its class)."""
    return ConfigRecord({P.DEVICE_ID: device.device_id})
