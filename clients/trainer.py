"""The client-plugin contract: a local trainer, and the standard (non-private) one.

A trainer takes the global model, the device's local training data and the settings of the
device's class, trains the model in place, and reports what it did. It may keep state across
rounds in the node's ``context.state`` (a Flower ``RecordDict``), which Flower persists per node
for the whole run.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from flwr.app import RecordDict
from torch import nn

from clients.data import LabeledData
from clients.registry import Registry


@dataclass(frozen=True)
class TrainSettings:
    """How one device trains in one round: its class budget and the scenario's optimiser.

    Attributes
    ----------
    local_epochs : int
        Passes over the local data per round.
    max_steps : int or None
        Cap on optimiser steps per round (a compute budget); ``None`` for no cap.
    batch_size : int
        Mini-batch size (the expected size under Poisson sampling).
    learning_rate, momentum, weight_decay : float
        SGD parameters.
    proximal_mu : float
        FedProx proximal coefficient; 0 disables the term.
    seed : int
        Seed for this device and round: shuffling, sampling and noise derive from it.
    planned_rounds : int
        Rounds in the run; privacy plugins calibrate noise over the whole run.
    participation : float
        Expected fraction of rounds this device trains in.
    privacy : dict
        The device class's privacy profile (``target_epsilon``, ``delta``, ``max_grad_norm``,
        ``noise_multiplier``); the standard trainer ignores it.
    """

    local_epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    seed: int = 0
    planned_rounds: int = 1
    participation: float = 1.0
    privacy: dict[str, float | None] = field(default_factory=dict)


@dataclass
class TrainReport:
    """What a trainer did in one round.

    Attributes
    ----------
    num_examples : int
        Local training samples.
    loss : float
        Mean training loss over the round's steps.
    steps : int
        Optimiser steps taken.
    wall_time_s : float
        Wall-clock seconds spent training.
    metrics : dict[str, float]
        Plugin-specific scalars (``epsilon``, ``delta``, ...), sent with the reply.
    declined : str or None
        Why the trainer refused to train (for example an exhausted privacy budget); the model is
        then unchanged and no update is sent.
    """

    num_examples: int
    loss: float
    steps: int
    wall_time_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    declined: str | None = None


class LocalTrainer(ABC):
    """Trains a model on one device's data; subclasses implement :meth:`train`."""

    reuses_model: ClassVar[bool] = False
    """Whether the trainer leaves the module's structure as it found it (no hooks left, no
    submodule replaced), so that a process may hand it one module object for device after
    device, each time loaded with the device's global model, instead of building a new one
    (building the module costs as much as a small device's whole local round)."""

    @abstractmethod
    def train(
        self,
        model: nn.Module,
        data: LabeledData,
        settings: TrainSettings,
        state: RecordDict,
    ) -> TrainReport:
        """Train ``model`` in place on ``data`` and report what happened."""


TRAINERS: Registry[type[LocalTrainer]] = Registry("trainer", "fl_iot.trainers")
"""Trainer classes by name; third-party packages add theirs through the ``fl_iot.trainers``
entry-point group."""


def to_tensors(data: LabeledData) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the data as torch tensors (no copy for float32 / int64 arrays)."""
    return torch.from_numpy(np.ascontiguousarray(data.x)), torch.from_numpy(
        np.ascontiguousarray(data.y)
    )


def shuffled_batches(
    num_samples: int, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Yield index batches of one shuffled epoch (index slicing is cheaper than a DataLoader)."""
    order = torch.randperm(num_samples, generator=generator)
    for start in range(0, num_samples, batch_size):
        yield order[start : start + batch_size]


def proximal_term(model: nn.Module, anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's ``mu / 2 * ||w - w_global||^2`` over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
    return (mu / 2.0) * torch.as_tensor(total)


def sgd(model: nn.Module, settings: TrainSettings) -> torch.optim.SGD:
    """The optimiser of trainers that need a ``torch.optim.Optimizer`` (Opacus wraps one)."""
    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=settings.learning_rate,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )


class MomentumSGD:
    """SGD with momentum and weight decay: what ``torch.optim.SGD`` computes, without its import.

    Building any ``torch.optim.Optimizer`` imports TorchDynamo (about 1.1 s on an idle core,
    more on a loaded one). A process that trains once pays it on every round: Flower's
    Deployment Engine starts a fresh ClientApp process for every message. The arithmetic is
    torch's single-tensor SGD (``foreach=False``, the default on CPU), no dampening, no Nesterov,
    in the same order of operations, so a model trains bit-identically with either
    (``tests/test_trainer_sgd.py``).
    """

    def __init__(
        self, params: list[nn.Parameter], lr: float, momentum: float, weight_decay: float
    ) -> None:
        self.params = params
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (``set_to_none``, as torch does by default)."""
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for index, param in enumerate(self.params):
            if param.grad is None:
                continue
            grad = param.grad
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            if self.momentum != 0:
                buffer = self.buffers[index]
                if buffer is None:
                    buffer = self.buffers[index] = grad.detach().clone()
                else:
                    buffer.mul_(self.momentum).add_(grad)
                grad = buffer
            param.add_(grad, alpha=-self.lr)


@TRAINERS.decorator("standard")
class StandardTrainer(LocalTrainer):
    """Mini-batch SGD with momentum, optional FedProx term and a step budget."""

    reuses_model = True

    def train(
        self,
        model: nn.Module,
        data: LabeledData,
        settings: TrainSettings,
        state: RecordDict,
    ) -> TrainReport:
        """Train ``model`` in place for the configured epochs or step budget."""
        started = time.perf_counter()
        x, y = to_tensors(data)
        generator = torch.Generator().manual_seed(settings.seed)
        optimizer = MomentumSGD(
            [p for p in model.parameters() if p.requires_grad],
            lr=settings.learning_rate,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
        criterion = nn.CrossEntropyLoss()
        anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        model.train()
        losses: list[float] = []
        for _ in range(settings.local_epochs):
            for batch in shuffled_batches(len(y), settings.batch_size, generator):
                if settings.max_steps is not None and len(losses) >= settings.max_steps:
                    break
                optimizer.zero_grad()
                loss = criterion(model(x[batch]), y[batch])
                if settings.proximal_mu > 0:
                    loss = loss + proximal_term(model, anchor, settings.proximal_mu)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
        return TrainReport(
            num_examples=len(y),
            loss=float(np.mean(losses)) if losses else float("nan"),
            steps=len(losses),
            wall_time_s=time.perf_counter() - started,
        )
