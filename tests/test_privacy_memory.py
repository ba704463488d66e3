"""Training-memory estimate: exact where it can be, bounded against autograd elsewhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clients.privacy import MemoryBudgetError, check_memory_budget, estimate_training_memory
from fl_iot.errors import ConfigError
from fl_iot.models import Cnn1d, Mlp

MODELS = [
    pytest.param(lambda: Cnn1d((1, 128), 5), (1, 128), id="cnn-ecg"),
    pytest.param(lambda: Cnn1d((14, 30), 2), (14, 30), id="cnn-cmapss"),
    pytest.param(lambda: Mlp((8,), 2, hidden=(32, 16)), (8,), id="mlp-occupancy"),
]


def autograd_saved_bytes(model: nn.Module, shape: tuple[int, ...], batch: int) -> int:
    """Bytes of the tensors autograd saves for backward (parameters excluded)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(torch.randn(batch, *shape))
        nn.functional.cross_entropy(logits, torch.zeros(batch, dtype=torch.long))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(size for ptr, size in storages.items() if ptr not in params)


@pytest.mark.parametrize(("build", "shape"), MODELS)
def test_parameter_memory_is_exact(build, shape):
    model = build()
    estimate = estimate_training_memory(model, shape, 16)
    exact = sum(p.numel() * p.element_size() for p in model.parameters())
    assert estimate.parameters == estimate.gradients == estimate.optimizer_state == exact
    assert estimate_training_memory(model, shape, 16, momentum=0.0).optimizer_state == 0


@pytest.mark.parametrize(("build", "shape"), MODELS)
def test_activation_estimate_bounds_what_autograd_saves(build, shape):
    # An estimate from layer outputs: never below what autograd keeps, at most 3x above it.
    model = build()
    for batch in (4, 32):
        measured = autograd_saved_bytes(model, shape, batch)
        estimated = estimate_training_memory(model, shape, batch).activations
        assert measured <= estimated <= 3 * measured


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("mode", ["hooks", "ew"])
@pytest.mark.parametrize(("build", "shape"), MODELS)
def test_per_sample_gradient_memory_matches_opacus(build, shape, mode):
    from opacus.grad_sample import GradSampleModule
    from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights

    model, batch = build(), 16
    estimate = estimate_training_memory(
        model, shape, batch, trainer="dp-sgd", grad_sample_mode=mode
    )
    wrapper = GradSampleModule if mode == "hooks" else GradSampleModuleExpandedWeights
    private = wrapper(model)
    try:
        logits = private(torch.randn(batch, *shape))
        nn.functional.cross_entropy(logits, torch.zeros(batch, dtype=torch.long)).backward()
        actual = sum(p.grad_sample.numel() * 4 for p in model.parameters())
    finally:
        private._close()
    # The estimate is for the Poisson-inflated batch; per sample it must be exact.
    assert estimate.per_sample_gradients / estimate.batch_size == actual / batch
    assert estimate.batch_size == batch + 16  # 16 + 4 * sqrt(16)


def test_ghost_mode_materialises_only_layers_without_a_norm_sampler():
    mlp = Mlp((561,), 6, hidden=(128, 64))
    cnn = Cnn1d((1, 128), 5)
    assert estimate_training_memory(mlp, (561,), 32, trainer="dp-sgd").grad_sample_mode == "ghost"
    assert estimate_training_memory(mlp, (561,), 32, trainer="dp-sgd").per_sample_gradients == 0
    ghost = estimate_training_memory(cnn, (1, 128), 32, trainer="dp-sgd", grad_sample_mode="ghost")
    conv_params = sum(
        p.numel() for m in cnn.modules() if isinstance(m, nn.Conv1d) for p in m.parameters()
    )
    assert ghost.per_sample_gradients == ghost.batch_size * conv_params * 4


def test_dp_costs_more_than_standard_and_grows_with_the_batch():
    model = Cnn1d((1, 128), 5)
    small = estimate_training_memory(model, (1, 128), 8, trainer="dp-sgd")
    large = estimate_training_memory(model, (1, 128), 64, trainer="dp-sgd")
    standard = estimate_training_memory(model, (1, 128), 64)
    assert standard.total < large.total
    assert small.total < large.total
    assert standard.per_sample_gradients == standard.dp_workspace == 0


def test_check_names_the_class_the_estimate_and_the_limit():
    model = Cnn1d((1, 128), 5)
    with pytest.raises(MemoryBudgetError) as error:
        check_memory_budget("wearable", 1.0, model, (1, 128), 64, trainer="dp-sgd")
    message = str(error.value)
    assert "device class 'wearable' cannot train Cnn1d with trainer 'dp-sgd'" in message
    assert "at batch size 64: estimated 7.98 MiB" in message
    assert "per-sample gradients" in message
    assert "exceeds memory_limit_mb=1" in message
    assert "device_classes.wearable.batch_size" in message
    assert isinstance(error.value, ConfigError)
    # The same model fits a smartphone, and a smaller batch without DP fits the wearable.
    assert (
        check_memory_budget("smartphone", 512, model, (1, 128), 64, trainer="dp-sgd").total_mb < 512
    )
    check_memory_budget("wearable", 1.0, model, (1, 128), 8)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
        ({"input_shape": ()}, ValueError, "input_shape must be non-empty positive sizes"),
        ({"grad_sample_mode": "fast"}, ValueError, "unknown grad_sample_mode 'fast'"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    args = {"input_shape": (8,), "batch_size": 8, "trainer": "dp-sgd"} | kwargs
    with pytest.raises(error, match=message):
        estimate_training_memory(Mlp((8,), 2), **args)
    with pytest.raises(ConfigError, match="memory_limit_mb must be > 0, got 0"):
        check_memory_budget("home_hub", 0, Mlp((8,), 2), (8,), 8)
