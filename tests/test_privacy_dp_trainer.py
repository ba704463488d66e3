"""DP-SGD trainer: accounting across rounds, budget rule, equivalence and clipping properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from clients import TRAINERS
from clients.data import LabeledData
from clients.dp_trainer import (
    BUDGET_EXHAUSTED,
    DP_STEPS,
    EPSILON,
    DpSgdTrainer,
    plan_round,
)
from clients.privacy import PrivacyLedger, epsilon_pld, epsilon_rdp
from clients.trainer import StandardTrainer, TrainSettings
from fl_iot.errors import ConfigError
from fl_iot.models import Cnn1d, Mlp

DELTA = 1e-5
HYPOTHESIS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_data(n: int, shape: tuple[int, ...], classes: int, seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    x = (scale * rng.normal(size=(n, *shape))).astype(np.float32)
    return LabeledData(x, rng.integers(0, classes, n).astype(np.int64))


def make_model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Mlp((6,), 3) if kind == "mlp" else Cnn1d((2, 16), 3, channels=(4,), hidden=8)


SHAPES = {"mlp": (6,), "cnn": (2, 16)}


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# --- accounting across rounds -----------------------------------------------------------------


def test_epsilon_accumulates_over_rounds_and_matches_dp_accounting():
    # Prepare: 3 rounds of 2 epochs x 8 steps (n=120, batch 16 -> q = 1/8) at a fixed sigma.
    data = make_data(120, (6,), 3)
    run = TrainSettings(
        local_epochs=2,
        batch_size=16,
        privacy={"noise_multiplier": 1.1, "max_grad_norm": 1.0, "delta": DELTA},
    )
    state = RecordDict()
    model = make_model("mlp")
    reported = []

    # Execute: the same state object across rounds, as Flower's context.state.
    for server_round in range(3):
        report = DpSgdTrainer().train(model, data, run, state)
        assert report.declined is None and report.steps == 16
        reported.append(report.metrics[EPSILON])

        # Assert: the ledger holds the whole run and the reported epsilon is independent RDP's.
        history = PrivacyLedger.load(state).history
        assert [tuple(e) for e in history] == [(1.1, 1 / 8, 16 * (server_round + 1))]
        reference = epsilon_rdp(history, DELTA)
        assert reported[-1] == pytest.approx(reference, rel=0.01)
        assert report.metrics[DP_STEPS] == 16 * (server_round + 1)
    assert reported[0] < reported[1] < reported[2]
    pld = epsilon_pld(PrivacyLedger.load(state).history, DELTA, value_discretization_interval=1e-3)
    assert pld <= reported[-1] + 1e-3


def test_a_fresh_state_restarts_the_accounting():
    data = make_data(64, (6,), 3)
    run = TrainSettings(batch_size=16, privacy={"noise_multiplier": 1.0})
    persistent = RecordDict()
    DpSgdTrainer().train(make_model("mlp"), data, run, persistent)
    second = DpSgdTrainer().train(make_model("mlp"), data, run, persistent)
    fresh = DpSgdTrainer().train(make_model("mlp"), data, run, RecordDict())
    assert second.metrics[EPSILON] > fresh.metrics[EPSILON] > 0


# --- budget rule and calibration ----------------------------------------------------------------


def test_device_declines_the_round_that_would_exceed_its_budget():
    # Prepare: sigma calibrated for 2 planned participations (4 rounds x participation 0.5).
    data = make_data(96, (6,), 3)
    run = TrainSettings(
        batch_size=16,
        planned_rounds=4,
        participation=0.5,
        privacy={"target_epsilon": 2.0, "delta": DELTA, "max_grad_norm": 1.0},
    )
    state, model = RecordDict(), make_model("mlp")
    epsilons, declined, flags, keys = [], [], [], []

    # Execute: the device is asked to train in 4 rounds (more than planned).
    for _ in range(4):
        before = flat(model).clone()
        report = DpSgdTrainer().train(model, data, run, state)
        epsilons.append(report.metrics[EPSILON])
        declined.append(report.declined)
        flags.append(report.metrics[BUDGET_EXHAUSTED])
        keys.append(set(report.metrics))
        if report.declined is not None:
            assert torch.equal(flat(model), before), "a declined round must not touch the model"
            assert report.steps == 0

    # Assert: the 2 planned rounds train and spend the target (to 1 %); later rounds decline.
    assert declined[:2] == [None, None]
    assert all(reason and "privacy budget exhausted" in reason for reason in declined[2:])
    assert "above the target 2" in str(declined[2])
    assert max(epsilons) <= 2.0
    assert epsilons[1] == pytest.approx(2.0, rel=0.01)
    assert epsilons[2] == epsilons[3] == epsilons[1], "declining must not spend budget"
    assert flags == [0.0, 1.0, 1.0, 1.0], "the flag warns one round ahead"
    assert all(k == keys[0] for k in keys), "declined replies carry the same metric keys"
    assert PrivacyLedger.load(state).declined_rounds == 2
    assert PrivacyLedger.load(state).steps == 2 * 6


def test_calibrated_noise_is_kept_for_the_whole_run():
    # Full-batch training (q = 1) keeps the calibration cheap; the rule is the same for any q.
    data = make_data(16, (6,), 3)
    run = TrainSettings(batch_size=16, planned_rounds=3, privacy={"target_epsilon": 4.0})
    state = RecordDict()
    DpSgdTrainer().train(make_model("mlp"), data, run, state)
    sigma = PrivacyLedger.load(state).calibrated_noise_multiplier
    # A different plan later (more rounds) must not re-calibrate mid-run.
    longer = TrainSettings(batch_size=16, planned_rounds=30, privacy={"target_epsilon": 4.0})
    report = DpSgdTrainer().train(make_model("mlp"), data, longer, state)
    assert sigma is not None
    assert report.metrics["noise-multiplier"] == sigma


def test_plan_follows_the_device_budget():
    run = TrainSettings(local_epochs=3, max_steps=20, batch_size=32, planned_rounds=10)
    plan = plan_round(500, run)
    assert plan.steps_per_epoch == 16 and plan.sample_rate == 1 / 16
    assert plan.steps == 20  # 3 x 16 = 48 capped at max_steps
    assert plan.planned_steps == 10 * 20
    third = plan_round(500, TrainSettings(planned_rounds=10, participation=0.3))
    assert third.planned_participations == 3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be >= 1, got 0"),
        ("local_epochs", 0, "local_epochs must be >= 1, got 0"),
        ("max_steps", 0, "max_steps must be >= 1 or null, got 0"),
        ("participation", 0.0, r"participation must be in \(0, 1\], got 0.0"),
        ("planned_rounds", 0, "planned_rounds must be >= 1, got 0"),
        ("proximal_mu", -1.0, "proximal_mu must be >= 0, got -1.0"),
    ],
)
def test_bad_settings_name_the_value_and_range(field, value, message):
    run = TrainSettings(privacy={"noise_multiplier": 1.0}, **{field: value})
    with pytest.raises(ConfigError, match=message):
        DpSgdTrainer().train(make_model("mlp"), make_data(32, (6,), 3), run, RecordDict())


def test_bad_privacy_and_mode_fail_early():
    data, model = make_data(32, (6,), 3), make_model("mlp")
    with pytest.raises(ConfigError, match=r"needs target_epsilon .* or noise_multiplier"):
        DpSgdTrainer().train(model, data, TrainSettings(privacy={}), RecordDict())
    with pytest.raises(ConfigError, match="unknown grad_sample_mode 'fast'; valid choices: auto"):
        DpSgdTrainer(grad_sample_mode="fast")
    with pytest.raises(ConfigError, match="budget is too small"):
        tiny = TrainSettings(planned_rounds=1000, privacy={"target_epsilon": 1e-4, "delta": 1e-9})
        DpSgdTrainer().train(model, data, tiny, RecordDict())


# --- the trained module -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "hooks", "ew", "ghost", "functorch"])
def test_original_module_is_trained_in_place_and_left_clean(mode):
    model = make_model("cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = TrainSettings(batch_size=8, privacy={"noise_multiplier": 0.5})

    report = DpSgdTrainer(grad_sample_mode=mode).train(
        model, make_data(40, (2, 16), 3), run, RecordDict()
    )

    assert report.steps == 5
    assert list(model.state_dict()) == list(before), "standard keys, no '_module.' prefix"
    assert any(not torch.equal(model.state_dict()[k], before[k]) for k in before)
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
        assert not module._forward_pre_hooks
    for p in model.parameters():
        assert not hasattr(p, "grad_sample") and not hasattr(p, "summed_grad")


def test_empty_poisson_batches_are_noise_only_steps_in_every_mode(monkeypatch):
    # q = 1/24 over 24 samples: about a third of the 24 batches are empty.
    from clients import dp_trainer

    empty_steps = []
    original = dp_trainer._empty_batch

    def spy(params, *, ghost):
        empty_steps.append(ghost)
        original(params, ghost=ghost)

    monkeypatch.setattr(dp_trainer, "_empty_batch", spy)
    data = make_data(24, (2, 16), 3)
    run = TrainSettings(batch_size=1, privacy={"noise_multiplier": 1.0})
    for mode in ("hooks", "ew", "ghost", "functorch"):
        empty_steps.clear()
        state, model = RecordDict(), make_model("cnn")
        report = DpSgdTrainer(grad_sample_mode=mode).train(model, data, run, state)
        assert report.steps == 24
        assert PrivacyLedger.load(state).steps == 24, "empty batches are accounted steps"
        assert len(empty_steps) >= 2
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_training_is_reproducible_from_the_seed():
    data = make_data(64, (6,), 3)
    run = TrainSettings(batch_size=16, seed=7, privacy={"noise_multiplier": 1.0})
    a, b, c = make_model("mlp"), make_model("mlp"), make_model("mlp")
    DpSgdTrainer().train(a, data, run, RecordDict())
    DpSgdTrainer().train(b, data, run, RecordDict())
    other = TrainSettings(batch_size=16, seed=8, privacy={"noise_multiplier": 1.0})
    DpSgdTrainer().train(c, data, other, RecordDict())
    assert torch.equal(flat(a), flat(b))
    assert not torch.equal(flat(a), flat(c))


def test_noise_has_the_calibrated_standard_deviation():
    # Full batch (q = 1), one SGD step without momentum: the noisy and noise-free updates differ
    # by lr * N(0, (sigma * C)^2) / n in every coordinate.
    n, lr, sigma, clip = 20, 0.1, 2.0, 0.5
    data = make_data(n, (6,), 3)
    common = {"batch_size": n, "learning_rate": lr, "momentum": 0.0}
    noisy, clean = make_model("mlp"), make_model("mlp")
    start = flat(noisy).clone()
    DpSgdTrainer().train(
        noisy,
        data,
        TrainSettings(**common, privacy={"noise_multiplier": sigma, "max_grad_norm": clip}),
        RecordDict(),
    )
    DpSgdTrainer().train(
        clean,
        data,
        TrainSettings(**common, privacy={"noise_multiplier": 0.0, "max_grad_norm": clip}),
        RecordDict(),
    )
    deviation = (flat(noisy) - flat(clean)).numpy()
    expected = lr * sigma * clip / n
    assert deviation.size > 1000
    assert deviation.std() == pytest.approx(expected, rel=0.1)
    assert abs(deviation.mean()) < 4 * expected / math.sqrt(deviation.size)
    assert not torch.equal(flat(noisy), start)


def test_model_that_opacus_cannot_fix_in_place_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    run = TrainSettings(privacy={"noise_multiplier": 1.0})
    with pytest.raises(ConfigError, match=r"cannot be trained with DP-SGD: .*BatchNorm"):
        DpSgdTrainer().train(model, make_data(32, (6,), 3), run, RecordDict())


class LegacyLinear(nn.Linear):
    """A layer type that a test-registered Opacus validator rejects and its fixer replaces."""


def test_fixable_model_is_fixed_and_its_weights_copied_back(monkeypatch):
    # A custom Opacus validator/fixer pair that keeps the state-dict layout (Linear subclass ->
    # Linear): the trainer trains the fixed copy and loads the result into the original.
    from opacus.validators import ModuleValidator
    from opacus.validators.errors import UnsupportedModuleError

    def validate(module):
        return [UnsupportedModuleError("LegacyLinear is not supported")]

    def fix(module):
        fixed = nn.Linear(module.in_features, module.out_features)
        fixed.load_state_dict(module.state_dict())
        return fixed

    monkeypatch.setitem(ModuleValidator.VALIDATORS, LegacyLinear, validate)
    monkeypatch.setitem(ModuleValidator.FIXERS, LegacyLinear, fix)
    model = nn.Sequential(nn.Flatten(), LegacyLinear(6, 3))
    before = flat(model).clone()
    run = TrainSettings(batch_size=8, privacy={"noise_multiplier": 0.5})

    DpSgdTrainer().train(model, make_data(32, (6,), 3), run, RecordDict())

    assert isinstance(model[1], LegacyLinear)
    assert not torch.equal(flat(model), before)


def test_registered_as_dp_sgd():
    assert TRAINERS.get("dp-sgd") is DpSgdTrainer


# --- properties ---------------------------------------------------------------------------------


@HYPOTHESIS
@given(
    kind=st.sampled_from(["mlp", "cnn"]),
    mode=st.sampled_from(["hooks", "ew", "ghost", "functorch"]),
    n=st.integers(2, 24),
    epochs=st.integers(1, 3),
    lr=st.floats(0.01, 0.3),
    momentum=st.sampled_from([0.0, 0.9]),
    mu=st.sampled_from([0.0, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_no_noise_and_no_clipping_equals_the_standard_trainer(
    kind, mode, n, epochs, lr, momentum, mu, seed
):
    # Poisson sampling and shuffled batches only coincide when every batch is the whole data:
    # with batch_size >= n the sample rate is 1, every sample is in every batch, and both
    # trainers take `epochs` full-batch steps. With zero noise and a clipping bound far above
    # every gradient norm, DP-SGD is then plain SGD (the FedProx term included).
    data = make_data(n, SHAPES[kind], 3, seed=seed)
    common = {
        "local_epochs": epochs,
        "batch_size": 32,
        "learning_rate": lr,
        "momentum": momentum,
        "proximal_mu": mu,
        "seed": seed,
    }
    private, plain = make_model(kind, seed), make_model(kind, seed)

    report = DpSgdTrainer(grad_sample_mode=mode).train(
        private,
        data,
        TrainSettings(**common, privacy={"noise_multiplier": 0.0, "max_grad_norm": 1e6}),
        RecordDict(),
    )
    StandardTrainer().train(plain, data, TrainSettings(**common), RecordDict())

    assert report.steps == epochs
    torch.testing.assert_close(flat(private), flat(plain), rtol=1e-4, atol=1e-5)


@HYPOTHESIS
@given(
    kind=st.sampled_from(["mlp", "cnn"]),
    mode=st.sampled_from(["hooks", "ew", "ghost"]),
    clip=st.floats(0.01, 5.0),
    scale=st.sampled_from([0.1, 1.0, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_one_sample_update_is_its_gradient_clipped_to_the_bound(kind, mode, clip, scale, seed):
    # One sample, full batch, no noise, plain SGD: the update is lr times the clipped
    # per-sample gradient Opacus computed, so its norm is min(||g||, C) (to Opacus' 1e-6).
    data = make_data(1, SHAPES[kind], 3, seed=seed, scale=scale)
    common = {"batch_size": 1, "learning_rate": 1.0, "momentum": 0.0, "seed": seed}
    private, plain = make_model(kind, seed), make_model(kind, seed)
    start = flat(private).clone()

    DpSgdTrainer(grad_sample_mode=mode).train(
        private,
        data,
        TrainSettings(**common, privacy={"noise_multiplier": 0.0, "max_grad_norm": clip}),
        RecordDict(),
    )
    StandardTrainer().train(plain, data, TrainSettings(**common), RecordDict())

    clipped = float((flat(private) - start).norm())
    raw = float((flat(plain) - start).norm())
    assert clipped <= clip * (1 + 1e-5)
    assert clipped == pytest.approx(min(raw, clip), rel=1e-3, abs=1e-7)


@HYPOTHESIS
@given(
    mode=st.sampled_from(["hooks", "ew", "ghost"]),
    n=st.integers(2, 16),
    clip=st.floats(0.01, 2.0),
    seed=st.integers(0, 2**16),
)
def test_batch_update_never_exceeds_the_clipping_bound(mode, n, clip, seed):
    # The mean of n per-sample gradients each clipped to C has norm <= C, whatever the data.
    data = make_data(n, (2, 16), 3, seed=seed, scale=50.0)
    run = TrainSettings(
        batch_size=n,
        learning_rate=1.0,
        momentum=0.0,
        privacy={"noise_multiplier": 0.0, "max_grad_norm": clip},
    )
    model = make_model("cnn", seed)
    start = flat(model).clone()
    DpSgdTrainer(grad_sample_mode=mode).train(model, data, run, RecordDict())
    assert float((flat(model) - start).norm()) <= clip * (1 + 1e-5)


def test_clipping_bound_is_not_vacuous_without_dp():
    # The same large-gradient data moves the standard trainer far beyond the bound.
    data = make_data(8, (2, 16), 3, scale=50.0)
    model = make_model("cnn")
    start = flat(model).clone()
    StandardTrainer().train(
        model, data, TrainSettings(batch_size=8, learning_rate=1.0, momentum=0.0), RecordDict()
    )
    assert float((flat(model) - start).norm()) > 2.0
