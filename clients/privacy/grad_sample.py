"""Which Opacus grad-sample mode to use for a model.

Shared by the DP-SGD trainer and the training-memory estimate.
"""

from __future__ import annotations

from torch import nn

GRAD_SAMPLE_MODES = ("auto", "hooks", "functorch", "ew", "ghost")
"""Valid ``grad_sample_mode`` values; ``auto`` picks per model (:func:`choose_grad_sample_mode`)."""

# Layers for which Opacus has a ghost-norm sampler: a model made only of these (plus
# parameter-free layers) never materialises per-sample gradients in ghost mode.
GHOST_NORM_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding)
# Layers torch's expanded weights ("ew" mode) can differentiate per sample.
_EW_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Embedding,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
GHOST_MIN_PARAMS = 20_000
"""Smallest all-linear model (trainable parameters) for which ``auto`` picks ghost clipping.

Measured on the 2-core CPU (batch 32, one epoch of 500 samples, hidden (128, 64)): ew / ghost ms
per epoch were 112 / 153 at 24 inputs (11.6k parameters), 136 / 127 at 128 inputs (25k),
212 / 141 at 256, 349 / 281 at 561 and 537 / 330 at 1024 inputs.
"""


def choose_grad_sample_mode(model: nn.Module) -> str:
    """The fastest correct Opacus grad-sample mode for ``model`` on a CPU.

    - All-linear models (MLPs) with at least :data:`GHOST_MIN_PARAMS` parameters: ``"ghost"``.
      Ghost clipping gets per-sample gradient norms from activations and output gradients
      without materialising per-sample gradients, which dominate for a wide first layer; it
      pays a second backward pass, which is the larger cost for a small MLP.
    - Models whose parameterised layers all have expanded-weights rules (linear, conv, norm
      layers: our MLPs and 1-D CNNs): ``"ew"``. It was the fastest mode for ``Cnn1d`` and small
      MLPs in ``benchmarks/bench_dp_overhead.py``; conv layers have no ghost-norm sampler, so
      ghost mode would materialise their per-sample gradients anyway and run two backward
      passes.
    - Anything else: ``"hooks"``, Opacus' default, which supports the most layer types.

    Poisson sampling can draw an empty batch, which ``ew`` cannot run; the trainer never runs
    one (it makes an empty batch a noise-only step), so this choice is safe.
    """
    # Exact types, as Opacus' and torch's registries match them (a subclass may override
    # forward with something they cannot differentiate per sample).
    with_params = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    if not with_params:
        return "hooks"
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if all(type(m) in GHOST_NORM_LAYERS for m in with_params) and (num_params >= GHOST_MIN_PARAMS):
        return "ghost"
    if all(type(m) in _EW_LAYERS for m in with_params):
        return "ew"
    return "hooks"
