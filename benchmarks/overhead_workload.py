"""The workload of the framework-overhead benchmark, and the per-device work all variants share.

``bench_overhead.py`` composes fl-iot's Hydra config once (outside the timed processes), turns it
into a :class:`Workload` and writes it as JSON. The plain Flower app (``plain_flower_app.py``) and
the pure PyTorch loop (``pure_loop.py``) read that JSON, so neither composes a Hydra config, and
both do exactly the work an fl-iot device does, with fl-iot's own data, model, federation and
trainer code:

- the data: :func:`fl_iot.data.load_federated_data` and ``FederatedData.device_split``;
- the device classes: :func:`fl_iot.federation.build_federation` (same seed, same mix);
- the model: the scenario's model class, built with the scenario's keyword arguments, seeded
  with ``torch.manual_seed(seed)`` for the initial global model as fl-iot's server does;
- local training: :class:`clients.trainer.StandardTrainer` with the :class:`TrainSettings` that
  ``fl_iot.device_runtime.train_settings`` builds (device-class budget, scenario optimiser, the
  same per-device-per-round seed);
- evaluation: :func:`fl_iot.metrics.evaluate_model` and :func:`fl_iot.metrics.scores`, on the
  device's local test split (federated) and on the central test split (every round, and once
  before round 1).

This module imports no Hydra/OmegaConf at module level (only :func:`workload_from_config` does,
and only the benchmark's parent process calls it). Timed child processes report progress with
:func:`mark`, one ``@@bench {json}`` line on stdout per event.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

MARK_PREFIX = "@@bench "
"""Prefix of the progress lines a timed child prints on stdout."""

BENCH_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "WANDB_MODE": "offline",
    # fl-iot's simulation seam sets these two with os.environ.setdefault; setting them for every
    # variant keeps Ray's environment identical across the three.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
}
"""Environment of every timed child process."""


def mark(event: str, **fields: Any) -> None:
    """Print one timestamped progress event (wall-clock epoch seconds) for the benchmark parent."""
    record = {"event": event, "t": time.time(), **fields}
    sys.stdout.write(MARK_PREFIX + json.dumps(record) + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class DeviceClassBudget:
    """The part of an fl-iot device class that decides a device's local training."""

    local_epochs: int
    max_steps: int | None
    batch_size: int
    privacy: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    """Everything that decides the work of one federated study (from fl-iot's composed config).

    Attributes
    ----------
    name : str
        Label of the workload (``default`` or ``small``).
    overrides : list of str
        The Hydra overrides fl-iot runs with (on top of the default config).
    scenario : str
        Scenario name.
    dataset : dict
        The scenario's ``dataset`` node, resolved (the key of fl-iot's data cache).
    num_devices, num_rounds, seed : int
        Fleet size, rounds, seed of the run.
    fraction_train, fraction_evaluate : float
        FedAvg's sampling fractions.
    min_train_devices, min_evaluate_devices : int
        FedAvg's ``min_train_nodes`` / ``min_evaluate_nodes``.
    central_evaluation : bool
        Whether the server evaluates the global model on the central test split every round.
    device_mix : dict
        Share of each device class.
    device_classes : dict
        Budget of each device class named in ``device_mix``.
    optimizer : dict
        ``learning_rate``, ``momentum``, ``weight_decay``.
    model_target : str
        Import path of the model class.
    model_kwargs : dict
        Extra keyword arguments of the model (besides input shape and class count).
    num_cpus_per_client : float
        Ray ``client_resources.num_cpus`` (fl-iot's ``engine.num_cpus_per_client``).
    num_cpus : int
        Ray ``init_args.num_cpus`` (fl-iot's ``engine.num_cpus`` or the CPU count).
    round_timeout_s : float
        Timeout of one ``send_and_receive``.
    """

    name: str
    overrides: list[str]
    scenario: str
    dataset: dict[str, Any]
    num_devices: int
    num_rounds: int
    seed: int
    fraction_train: float
    fraction_evaluate: float
    min_train_devices: int
    min_evaluate_devices: int
    central_evaluation: bool
    device_mix: dict[str, float]
    device_classes: dict[str, DeviceClassBudget]
    optimizer: dict[str, float]
    model_target: str
    model_kwargs: dict[str, Any]
    num_cpus_per_client: float
    num_cpus: int
    round_timeout_s: float

    @property
    def devices_per_train_round(self) -> int:
        """Devices sampled per training round, as Flower's FedAvg computes it."""
        return max(int(self.num_devices * self.fraction_train), self.min_train_devices)

    @property
    def devices_per_evaluate_round(self) -> int:
        """Devices sampled per federated-evaluation round, as Flower's FedAvg computes it."""
        return max(int(self.num_devices * self.fraction_evaluate), self.min_evaluate_devices)

    def backend_config(self) -> dict[str, Any]:
        """The ``run_simulation`` backend config, built as ``fl_iot/simulation.py`` builds it."""
        return {
            "client_resources": {"num_cpus": float(self.num_cpus_per_client), "num_gpus": 0.0},
            "init_args": {"num_cpus": int(self.num_cpus), "log_to_driver": False},
        }

    def describe(self) -> str:
        """One line that states the workload exactly."""
        classes = ", ".join(
            f"{name} {share:g} (epochs {b.local_epochs}, max_steps {b.max_steps}, "
            f"batch {b.batch_size})"
            for name, share in self.device_mix.items()
            for b in [self.device_classes[name]]
        )
        opt = self.optimizer
        return (
            f"{self.name}: scenario {self.scenario}, dataset {self.dataset.get('name')} "
            f"({self.dataset.get('partition')} partition, options {self.dataset.get('options')}), "
            f"{self.num_devices} devices, {self.num_rounds} rounds, "
            f"fraction_train {self.fraction_train:g} "
            f"({self.devices_per_train_round} devices/round), "
            f"fraction_evaluate {self.fraction_evaluate:g} "
            f"({self.devices_per_evaluate_round} devices/round), "
            f"central evaluation {'every round + initial' if self.central_evaluation else 'off'}, "
            f"model {self.model_target.rsplit('.', 1)[-1]}{self.model_kwargs or ''}, "
            f"SGD lr {opt['learning_rate']:g} momentum {opt['momentum']:g} "
            f"wd {opt['weight_decay']:g}, device classes: {classes}; seed {self.seed}; "
            f"Ray client_resources num_cpus {self.num_cpus_per_client:g}, "
            f"init num_cpus {self.num_cpus}; overrides {self.overrides or '(none)'}"
        )

    def differences(self, other: Workload) -> list[str]:
        """Names of the fields (other than ``name`` and ``overrides``) that differ."""
        mine, theirs = asdict(self), asdict(other)
        return sorted(
            k for k in mine if k not in ("name", "overrides") and mine[k] != theirs.get(k)
        )

    def to_json(self) -> str:
        """Serialise to JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Workload:
        """Deserialise from :meth:`to_json`'s output."""
        raw = json.loads(text)
        raw["device_classes"] = {
            name: DeviceClassBudget(**budget) for name, budget in raw["device_classes"].items()
        }
        return cls(**raw)

    @classmethod
    def load(cls, path: str | Path) -> Workload:
        """Read a workload JSON file."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def workload_from_config(name: str, overrides: list[str]) -> Workload:
    """Compose fl-iot's config with ``overrides`` and extract the workload.

    Raises
    ------
    ValueError
        If the composed run is not one the plain variants reproduce (see :func:`workload_of`).
    """
    from fl_iot.run_config import compose_config

    return workload_of(name, overrides, compose_config(tuple(overrides)))


def workload_of(name: str, overrides: list[str], cfg: Any) -> Workload:
    """Extract the workload of a composed fl-iot config (a ``DictConfig``).

    Raises
    ------
    ValueError
        If the run is not one the plain variants reproduce: an attack, a non-standard trainer
        or a strategy other than FedAvg.
    """
    import os

    from omegaconf import OmegaConf

    scenario = cfg.scenario
    strategy_target = str(cfg.strategy.get("_target_", ""))
    if strategy_target != "flwr.serverapp.strategy.FedAvg":
        raise ValueError(f"the overhead benchmark reproduces FedAvg only, got {strategy_target}")
    if cfg.attack.name != "none" or cfg.attack.fraction != 0.0:
        raise ValueError("the overhead benchmark runs without attackers (attack=none)")
    privacy = cfg.get("privacy")
    if privacy is not None and privacy.get("local_dp"):
        raise ValueError("the overhead benchmark reproduces the standard trainer (privacy=none)")
    budgets: dict[str, DeviceClassBudget] = {}
    for class_name in scenario.device_mix:
        device_class = cfg.device_classes[class_name]
        if device_class.trainer != "standard" or device_class.trainer_options:
            raise ValueError(
                f"device class {class_name} uses trainer {device_class.trainer!r}; the overhead "
                "benchmark reproduces the standard trainer only"
            )
        budgets[str(class_name)] = DeviceClassBudget(
            local_epochs=int(device_class.local_epochs),
            max_steps=None if device_class.max_steps is None else int(device_class.max_steps),
            batch_size=int(device_class.batch_size),
            privacy=OmegaConf.to_container(device_class.privacy, resolve=True),  # type: ignore[arg-type]
        )
    model: dict[str, Any] = OmegaConf.to_container(scenario.model, resolve=True)  # type: ignore[assignment]
    model_target = str(model.pop("_target_"))
    model.pop("_partial_", None)
    dataset: dict[str, Any] = OmegaConf.to_container(scenario.dataset, resolve=True)  # type: ignore[assignment]
    return Workload(
        name=name,
        overrides=list(overrides),
        scenario=str(scenario.name),
        dataset=dataset,
        num_devices=int(scenario.num_devices),
        num_rounds=int(scenario.num_rounds),
        seed=int(cfg.seed),
        fraction_train=float(scenario.fraction_train),
        fraction_evaluate=float(scenario.fraction_evaluate),
        min_train_devices=int(scenario.min_train_devices),
        min_evaluate_devices=int(scenario.min_evaluate_devices),
        central_evaluation=bool(scenario.central_evaluation),
        device_mix={str(k): float(v) for k, v in scenario.device_mix.items()},
        device_classes=budgets,
        optimizer={
            "learning_rate": float(scenario.optimizer.learning_rate),
            "momentum": float(scenario.optimizer.momentum),
            "weight_decay": float(scenario.optimizer.weight_decay),
        },
        model_target=model_target,
        model_kwargs=model,
        num_cpus_per_client=float(cfg.engine.num_cpus_per_client),
        num_cpus=int(cfg.engine.num_cpus or os.cpu_count() or 1),
        round_timeout_s=float(cfg.engine.round_timeout_s),
    )


# --------------------------------------------------------------------------------------------
# The per-device work (run in the Flower ServerApp/ClientApps and in the pure loop alike).


@dataclass(frozen=True)
class Fleet:
    """The loaded data and the device classes of a workload (one per process, cached)."""

    data: Any  # fl_iot.data.FederatedData
    device_class: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset."""
        return int(self.data.source.num_classes)


def load_fleet(workload: Workload) -> Fleet:
    """Load the workload's data and device classes (cached per process, like fl-iot's)."""
    return _load_fleet_cached(workload.to_json())


@lru_cache(maxsize=2)
def _load_fleet_cached(workload_json: str) -> Fleet:
    from fl_iot.data import load_federated_data
    from fl_iot.federation import build_federation

    workload = Workload.from_json(workload_json)
    data = load_federated_data(workload.dataset, workload.num_devices, workload.seed)
    federation = build_federation(data.natural_keys, workload.device_mix, 0.0, workload.seed)
    return Fleet(data, tuple(d.device_class for d in federation.devices))


def build_model(workload: Workload, fleet: Fleet) -> nn.Module:
    """The scenario's model (no Hydra: the class is imported by its path)."""
    module_name, class_name = workload.model_target.rsplit(".", 1)
    model_class = getattr(importlib.import_module(module_name), class_name)
    model = model_class(
        input_shape=tuple(fleet.data.source.input_shape),
        num_classes=fleet.num_classes,
        **workload.model_kwargs,
    )
    assert isinstance(model, nn.Module)
    return model


def initial_state(workload: Workload, fleet: Fleet) -> dict[str, torch.Tensor]:
    """The seeded initial global model, as fl-iot's server builds it."""
    torch.manual_seed(workload.seed)
    return build_model(workload, fleet).state_dict()


def device_seed(seed: int, device_id: int, server_round: int) -> int:
    """fl-iot's per-device, per-round seed (``fl_iot.device_runtime.device_seed``)."""
    return int(np.random.SeedSequence([seed, device_id, server_round]).generate_state(1)[0])


def train_settings(workload: Workload, fleet: Fleet, device_id: int, server_round: int) -> Any:
    """The ``TrainSettings`` ``fl_iot.device_runtime.train_settings`` builds for this device."""
    from clients.trainer import TrainSettings

    budget = workload.device_classes[fleet.device_class[device_id]]
    return TrainSettings(
        local_epochs=budget.local_epochs,
        max_steps=budget.max_steps,
        batch_size=budget.batch_size,
        learning_rate=workload.optimizer["learning_rate"],
        momentum=workload.optimizer["momentum"],
        weight_decay=workload.optimizer["weight_decay"],
        proximal_mu=0.0,
        seed=device_seed(workload.seed, device_id, server_round),
        planned_rounds=workload.num_rounds,
        participation=workload.devices_per_train_round / workload.num_devices,
        privacy=dict(budget.privacy),
    )


@dataclass(frozen=True)
class TrainOutcome:
    """What one device's local training produced."""

    state: dict[str, torch.Tensor]
    num_examples: int
    loss: float
    steps: int
    wall_time_s: float


def train_device(
    workload: Workload,
    fleet: Fleet,
    device_id: int,
    global_state: dict[str, torch.Tensor],
    server_round: int,
) -> TrainOutcome:
    """Train the global model on one device's local training split (``StandardTrainer``)."""
    from flwr.app import RecordDict

    from clients.trainer import StandardTrainer

    torch.set_num_threads(1)
    settings = train_settings(workload, fleet, device_id, server_round)
    local_train, _ = fleet.data.device_split(device_id)
    model = build_model(workload, fleet)
    model.load_state_dict(global_state)
    torch.manual_seed(settings.seed)
    report = StandardTrainer().train(model, local_train, settings, RecordDict())
    return TrainOutcome(
        {k: v.detach() for k, v in model.state_dict().items()},
        report.num_examples,
        report.loss,
        report.steps,
        report.wall_time_s,
    )


def evaluate_device(
    workload: Workload, fleet: Fleet, device_id: int, global_state: dict[str, torch.Tensor]
) -> tuple[int, float, np.ndarray]:
    """Evaluate the global model on one device's local test split: ``(n, loss, confusion)``."""
    from fl_iot.metrics import evaluate_model

    torch.set_num_threads(1)
    _, local_test = fleet.data.device_split(device_id)
    model = build_model(workload, fleet)
    model.load_state_dict(global_state)
    loss, confusion = evaluate_model(model, local_test, fleet.num_classes)
    return len(local_test), (0.0 if math.isnan(loss) else loss), confusion


def evaluate_central(
    workload: Workload, fleet: Fleet, global_state: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Scores and loss of the global model on the central test split."""
    from fl_iot.metrics import evaluate_model, scores

    model = build_model(workload, fleet)
    model.load_state_dict(global_state)
    loss, confusion = evaluate_model(model, fleet.data.source.test, fleet.num_classes)
    return {**scores(confusion), "loss": loss}


def federated_scores(results: list[tuple[int, float, np.ndarray]]) -> dict[str, float]:
    """Pool device evaluations as fl-iot does: sum confusions, example-weighted loss."""
    from fl_iot.metrics import scores

    if not results:
        return {}
    confusion = sum(matrix for _, _, matrix in results)
    examples = sum(n for n, _, _ in results)
    loss = sum(n * loss for n, loss, _ in results) / examples if examples else 0.0
    return {**scores(np.asarray(confusion)), "loss": loss, "num_examples": float(examples)}
