"""Training-memory estimate of a model on a device class, and the check against its limit.

This is an **estimate of tensor memory, not a measurement**. It counts what training keeps in
float32 tensors:

- parameters, their gradients, and SGD's momentum buffer (none without momentum);
- activations: the input and every leaf module's output for one batch (what autograd saves, to
  within a small factor), plus one activation-gradient buffer of the largest layer output;
- DP-SGD only: per-sample gradients (``batch x parameters`` for the layers whose per-sample
  gradients the grad-sample mode materialises: all layers in hooks/functorch/ew, only the layers
  without a ghost-norm sampler in ghost mode), the largest per-layer unfold workspace of a
  convolution, and the optimizer's clipped sum and noise buffers;
- DP-SGD batches are Poisson: sized at ``batch_size + 4 * sqrt(batch_size)``, above the
  99.99th percentile of the batch size.

Not counted: the local dataset, the Python/PyTorch runtime (hundreds of MB on a desktop; a real
microcontroller would run a different stack), allocator fragmentation and temporary buffers of
individual kernels. ``tests/test_privacy_memory.py`` checks the parts that can be checked exactly
(parameters, per-sample gradients) and the activations against autograd's saved tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from clients.errors import ConfigError
from clients.privacy.grad_sample import (
    GHOST_NORM_LAYERS,
    GRAD_SAMPLE_MODES,
    choose_grad_sample_mode,
)

FLOAT_BYTES = 4
MB = 1024 * 1024


class MemoryBudgetError(ConfigError):
    """A model cannot train within a device class's ``memory_limit_mb``."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated training memory, in bytes, by component.

    Attributes
    ----------
    batch_size : int
        The batch size the estimate is for (Poisson-inflated for DP-SGD).
    trainer : str
        ``"standard"`` or ``"dp-sgd"``.
    grad_sample_mode : str or None
        Opacus mode for DP-SGD; ``None`` for the standard trainer.
    """

    batch_size: int
    trainer: str
    grad_sample_mode: str | None
    parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    per_sample_gradients: int = 0
    dp_workspace: int = 0

    @property
    def total(self) -> int:
        """All components, in bytes."""
        return (
            self.parameters
            + self.gradients
            + self.optimizer_state
            + self.activations
            + self.per_sample_gradients
            + self.dp_workspace
        )

    @property
    def total_mb(self) -> float:
        """All components, in MiB."""
        return self.total / MB

    def describe(self) -> str:
        """One line: the total and its non-zero components in MiB."""
        parts = {
            "parameters": self.parameters,
            "gradients": self.gradients,
            "optimizer state": self.optimizer_state,
            "activations": self.activations,
            "per-sample gradients": self.per_sample_gradients,
            "DP workspace": self.dp_workspace,
        }
        detail = ", ".join(f"{k} {v / MB:.3g}" for k, v in parts.items() if v)
        return f"{self.total_mb:.3g} MiB ({detail})"


def estimate_training_memory(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    *,
    trainer: str = "standard",
    grad_sample_mode: str = "auto",
    momentum: float = 0.9,
) -> MemoryEstimate:
    """Estimate the tensor memory of training ``model`` for one batch.

    Parameters
    ----------
    model : nn.Module
        The model (one forward pass on a single zero sample is run to size the activations).
    input_shape : sequence of int
        Shape of one sample.
    batch_size : int
        Mini-batch size (the expected size under Poisson sampling).
    trainer : str
        ``"dp-sgd"`` adds per-sample gradients and DP buffers; any other name is estimated as
        the standard trainer (a lower bound for a third-party trainer).
    grad_sample_mode : str
        Opacus mode for DP-SGD; ``"auto"`` resolves it as the DP trainer does.
    momentum : float
        SGD momentum; a momentum buffer is counted when it is non-zero.

    Raises
    ------
    ValueError
        For a batch size below 1, an empty input shape or an unknown grad-sample mode.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not input_shape or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input_shape must be non-empty positive sizes, got {tuple(input_shape)}")
    dp = trainer == "dp-sgd"
    mode: str | None = None
    if dp:
        if grad_sample_mode == "auto":
            mode = choose_grad_sample_mode(model)
        elif grad_sample_mode in GRAD_SAMPLE_MODES:
            mode = grad_sample_mode
        else:
            raise ValueError(
                f"unknown grad_sample_mode {grad_sample_mode!r}; valid choices: "
                f"{', '.join(GRAD_SAMPLE_MODES)}"
            )
    batch = batch_size + math.ceil(4 * math.sqrt(batch_size)) if dp else batch_size

    trainable = [p for p in model.parameters() if p.requires_grad]
    num_params = sum(p.numel() for p in trainable)
    all_params = sum(p.numel() for p in model.parameters())
    per_sample_outputs, largest_output, conv_workspace = _activation_sizes(model, input_shape)

    per_sample_grads = 0
    dp_workspace = 0
    if dp:
        materialised = sum(
            p.numel()
            for m in model.modules()
            if not (mode == "ghost" and type(m) in GHOST_NORM_LAYERS)
            for p in m.parameters(recurse=False)
            if p.requires_grad
        )
        per_sample_grads = batch * materialised * FLOAT_BYTES
        # Clipped sum and noise, one parameter-sized buffer each, plus the largest conv unfold
        # (computed one layer at a time, so the maximum, not the sum).
        dp_workspace = (2 * num_params + batch * conv_workspace) * FLOAT_BYTES
    return MemoryEstimate(
        batch_size=batch,
        trainer="dp-sgd" if dp else "standard",
        grad_sample_mode=mode,
        parameters=all_params * FLOAT_BYTES,
        gradients=num_params * FLOAT_BYTES,
        optimizer_state=num_params * FLOAT_BYTES if momentum else 0,
        activations=batch * (per_sample_outputs + largest_output) * FLOAT_BYTES,
        per_sample_gradients=per_sample_grads,
        dp_workspace=dp_workspace,
    )


def _activation_sizes(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Count per-sample elements from a forward pass on one zero sample.

    Returns (input + all leaf outputs, largest leaf output, largest conv unfold).
    """
    outputs: list[int] = []
    unfold: list[int] = [0]
    handles = []

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(output, torch.Tensor):
            outputs.append(output[0].numel())
        if isinstance(module, nn.modules.conv._ConvNd):
            # Per-sample conv gradients unfold the input: (C_in / groups * prod(kernel)) values
            # per output position.
            kernel = math.prod(module.kernel_size)
            positions = output[0, 0].numel()
            unfold.append(module.in_channels // module.groups * kernel * positions)

    for module in model.modules():
        if not any(True for _ in module.children()):
            handles.append(module.register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()  # no dropout randomness; shapes are the same
        with torch.no_grad():
            model(torch.zeros((1, *(int(d) for d in input_shape))))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return (
        math.prod(int(d) for d in input_shape) + sum(outputs),
        max(outputs, default=0),
        max(unfold),
    )


def check_memory_budget(
    device_class: str,
    memory_limit_mb: float,
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    *,
    trainer: str = "standard",
    grad_sample_mode: str = "auto",
    momentum: float = 0.9,
) -> MemoryEstimate:
    """Raise if training ``model`` on ``device_class`` would not fit its memory limit.

    Returns
    -------
    MemoryEstimate
        The estimate, when it fits.

    Raises
    ------
    MemoryBudgetError
        Naming the device class, the estimate (with its components) and the limit.
    ConfigError
        If ``memory_limit_mb`` is not a positive number.
    """
    if not (math.isfinite(memory_limit_mb) and memory_limit_mb > 0):
        raise ConfigError(
            f"device_classes.{device_class}.memory_limit_mb must be > 0, got {memory_limit_mb}"
        )
    estimate = estimate_training_memory(
        model,
        input_shape,
        batch_size,
        trainer=trainer,
        grad_sample_mode=grad_sample_mode,
        momentum=momentum,
    )
    if estimate.total_mb > memory_limit_mb:
        mode = (
            f" ({estimate.grad_sample_mode} per-sample gradients)"
            if estimate.trainer == "dp-sgd"
            else ""
        )
        raise MemoryBudgetError(
            f"device class {device_class!r} cannot train {type(model).__name__} with trainer "
            f"{trainer!r}{mode} at batch size {batch_size}: estimated {estimate.describe()} "
            f"exceeds memory_limit_mb={memory_limit_mb:g}. Reduce "
            f"device_classes.{device_class}.batch_size, use a smaller model, or raise the "
            "limit. (An estimate of tensor memory, not a measurement; see clients.privacy.memory.)"
        )
    return estimate
