"""DP-SGD local trainer (Opacus) with run-long privacy accounting in ``context.state``.

What a round does
-----------------
1. Validate the device class's privacy profile (:class:`clients.privacy.PrivacyProfile`).
2. Plan the round: sample rate ``q = 1 / ceil(n / batch_size)`` (Opacus' definition, equal to
   ``batch_size / n`` when the batch size divides ``n``), ``ceil(n / batch_size)`` steps per
   epoch, ``local_epochs`` epochs, capped at ``max_steps``.
3. Fix the noise multiplier: the profile's ``noise_multiplier`` if set; otherwise the one
   calibrated in the device's first round from ``target_epsilon`` over the PLANNED run
   (``ceil(planned_rounds * participation)`` rounds of this round's steps, Opacus' RDP
   accountant) and kept in the ledger.
4. Budget rule: if the epsilon after this round would exceed ``target_epsilon``, decline the
   round (``TrainReport.declined``); the model and the ledger's epsilon stay unchanged.
5. Train with Opacus: ``ModuleValidator`` check (and ``fix`` when it keeps the state-dict
   keys), ``PrivacyEngine(accountant="rdp").make_private`` with Poisson sampling, the chosen
   grad-sample mode, and the accountant history restored from ``context.state``. Batches are
   drawn by Opacus' ``UniformWithReplacementSampler`` (the sampler inside its ``DPDataLoader``)
   and cut from in-memory tensors, which avoids the DataLoader's per-sample collate cost.
6. Store the accountant's history back into ``context.state`` and report epsilon.

The ORIGINAL module is trained in place: Opacus' ``GradSampleModule`` wraps it without copying
its parameters, and ``to_standard_module()`` removes every hook and per-sample attribute at the
end, so ``model.state_dict()`` has the standard keys (no ``_module.`` prefix).

FedProx
-------
The proximal gradient ``mu * (w - w_global)`` is added AFTER clipping and noising, just before
the SGD update. It depends only on the current (already private) weights and the public global
model, so it is post-processing and costs no privacy; adding it to the loss instead would be
wrong under Opacus, whose per-sample hooks never see a parameter-only term and whose optimizer
replaces ``p.grad`` with the noisy clipped sum.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import RecordDict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clients.data import LabeledData
from clients.errors import ConfigError
from clients.privacy.accounting import (
    DpSgdEvent,
    calibrate_noise_multiplier,
    epsilon_opacus_rdp,
    validate_history,
)
from clients.privacy.grad_sample import GRAD_SAMPLE_MODES, choose_grad_sample_mode
from clients.privacy.ledger import LEDGER_KEY, PrivacyLedger
from clients.privacy.profile import PrivacyProfile
from clients.trainer import (
    TRAINERS,
    LocalTrainer,
    TrainReport,
    TrainSettings,
    proximal_term,
    sgd,
    to_tensors,
)

# Metric keys of a DP-SGD reply (every reply carries all of them, declined or not, because
# Flower's FedAvg requires identical metric keys across replies).
EPSILON = "epsilon"
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
MAX_GRAD_NORM = "max-grad-norm"
DP_STEPS = "dp-steps"
EPSILON_REMAINING = "epsilon-remaining"
BUDGET_EXHAUSTED = "budget-exhausted"


@dataclass(frozen=True)
class DpRoundPlan:
    """How many private steps a device takes per round, at what sample rate.

    Attributes
    ----------
    num_samples : int
        Local training samples ``n``.
    sample_rate : float
        Poisson sampling probability ``q = 1 / steps_per_epoch``.
    steps_per_epoch : int
        ``ceil(n / batch_size)``: one expected pass over the data.
    steps : int
        Steps this round: ``local_epochs * steps_per_epoch``, capped at ``max_steps``.
    planned_participations : int
        Rounds the device is expected to train in: ``ceil(planned_rounds * participation)``.
    """

    num_samples: int
    sample_rate: float
    steps_per_epoch: int
    steps: int
    planned_participations: int

    @property
    def planned_steps(self) -> int:
        """Private steps over the planned run (what the noise is calibrated for)."""
        return self.planned_participations * self.steps

    def event(self, noise_multiplier: float) -> DpSgdEvent:
        """Return the privacy event of this round at ``noise_multiplier``."""
        return DpSgdEvent(noise_multiplier, self.sample_rate, self.steps)


def plan_round(num_samples: int, settings: TrainSettings) -> DpRoundPlan:
    """Plan a device's private round from its data size and class budget.

    Raises
    ------
    ConfigError
        If a setting is out of its valid range.
    """
    if num_samples < 1:
        raise ConfigError(f"a DP-SGD device needs >= 1 training sample, got {num_samples}")
    if settings.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {settings.batch_size}")
    if settings.local_epochs < 1:
        raise ConfigError(f"local_epochs must be >= 1, got {settings.local_epochs}")
    if settings.max_steps is not None and settings.max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1 or null, got {settings.max_steps}")
    if settings.planned_rounds < 1:
        raise ConfigError(f"planned_rounds must be >= 1, got {settings.planned_rounds}")
    if not 0.0 < settings.participation <= 1.0:
        raise ConfigError(f"participation must be in (0, 1], got {settings.participation}")
    if settings.proximal_mu < 0:
        raise ConfigError(f"proximal_mu must be >= 0, got {settings.proximal_mu}")
    steps_per_epoch = math.ceil(num_samples / settings.batch_size)
    steps = settings.local_epochs * steps_per_epoch
    if settings.max_steps is not None:
        steps = min(steps, settings.max_steps)
    # The small epsilon keeps 10 * 0.3 = 3.0000000000000004 from becoming 4 rounds.
    participations = max(1, math.ceil(settings.planned_rounds * settings.participation - 1e-9))
    return DpRoundPlan(num_samples, 1.0 / steps_per_epoch, steps_per_epoch, steps, participations)


@TRAINERS.decorator("dp-sgd")
class DpSgdTrainer(LocalTrainer):
    """Sample-level DP-SGD with Opacus, Poisson sampling and a run-long privacy budget.

    Parameters
    ----------
    grad_sample_mode : str
        Opacus per-sample gradient mode: ``"auto"`` (see :func:`choose_grad_sample_mode`),
        ``"hooks"``, ``"functorch"``, ``"ew"`` or ``"ghost"``.
    secure_mode : bool
        Opacus' secure RNG for sampling and noise (needs ``torchcsprng``). Off by default: runs
        are then reproducible from ``TrainSettings.seed``, which is what experiments need, but
        the noise is not cryptographically secure.
    state_key : str
        Key of the ledger's ``ConfigRecord`` in ``context.state``.

    Notes
    -----
    Epsilon is Opacus' RDP accountant at the profile's delta with :data:`RDP_ORDERS`; the
    ``target_epsilon`` of a profile refers to that accountant. ``clients.privacy.epsilon_rdp``
    and ``epsilon_pld`` recompute it independently with Google's ``dp-accounting``.

    The guarantee covers the model update only. ``TrainReport.loss`` (the mean training loss)
    and ``num_examples`` are computed from the raw local data without noise; a deployment that
    needs the full guarantee must not send them (or must privatise them) in the reply.
    """

    def __init__(
        self,
        grad_sample_mode: str = "auto",
        secure_mode: bool = False,
        state_key: str = LEDGER_KEY,
    ) -> None:
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(
                f"unknown grad_sample_mode {grad_sample_mode!r}; valid choices: "
                f"{', '.join(GRAD_SAMPLE_MODES)}"
            )
        self.grad_sample_mode = grad_sample_mode
        self.secure_mode = secure_mode
        self.state_key = state_key

    def train(
        self,
        model: nn.Module,
        data: LabeledData,
        settings: TrainSettings,
        state: RecordDict,
    ) -> TrainReport:
        """Train ``model`` in place with DP-SGD, or decline if the budget would be exceeded."""
        started = time.perf_counter()
        profile = PrivacyProfile.from_mapping(settings.privacy)
        plan = plan_round(len(data), settings)
        ledger = PrivacyLedger.load(state, self.state_key)
        sigma = self._noise_multiplier(profile, plan, ledger)
        epsilon_before = ledger.epsilon(profile.delta)
        epsilon_after = epsilon_opacus_rdp([*ledger.history, plan.event(sigma)], profile.delta)

        if profile.target_epsilon is not None and epsilon_after > profile.target_epsilon:
            ledger.declined_rounds += 1
            ledger.save(state, self.state_key)
            return TrainReport(
                num_examples=plan.num_samples,
                loss=float("nan"),
                steps=0,
                wall_time_s=time.perf_counter() - started,
                metrics=_metrics(profile, plan, sigma, ledger, epsilon_before, exhausted=True),
                declined=(
                    f"privacy budget exhausted: this round ({plan.steps} steps at noise "
                    f"multiplier {sigma:.4g}, sample rate {plan.sample_rate:.4g}) would raise "
                    f"epsilon from {epsilon_before:.4g} to {epsilon_after:.4g}, above the "
                    f"target {profile.target_epsilon:g} at delta={profile.delta:g}"
                ),
            )

        losses, history = self._train_private(model, data, settings, profile, plan, sigma, ledger)
        ledger.history = history
        ledger.save(state, self.state_key)
        epsilon = ledger.epsilon(profile.delta)
        exhausted = profile.target_epsilon is not None and (
            epsilon_opacus_rdp([*history, plan.event(sigma)], profile.delta)
            > profile.target_epsilon
        )
        return TrainReport(
            num_examples=plan.num_samples,
            loss=float(np.mean(losses)) if losses else float("nan"),
            steps=plan.steps,
            wall_time_s=time.perf_counter() - started,
            metrics=_metrics(profile, plan, sigma, ledger, epsilon, exhausted=exhausted),
        )

    def _noise_multiplier(
        self, profile: PrivacyProfile, plan: DpRoundPlan, ledger: PrivacyLedger
    ) -> float:
        if profile.noise_multiplier is not None:
            return profile.noise_multiplier
        if ledger.calibrated_noise_multiplier is None:
            assert profile.target_epsilon is not None  # PrivacyProfile guarantees one of them
            ledger.calibrated_noise_multiplier = calibrate_noise_multiplier(
                profile.target_epsilon, profile.delta, plan.sample_rate, plan.planned_steps
            )
        return ledger.calibrated_noise_multiplier

    def _train_private(
        self,
        model: nn.Module,
        data: LabeledData,
        settings: TrainSettings,
        profile: PrivacyProfile,
        plan: DpRoundPlan,
        sigma: float,
        ledger: PrivacyLedger,
    ) -> tuple[list[float], list[DpSgdEvent]]:
        """Run the round's DP-SGD steps; return the losses and the accountant's new history."""
        # Imported here: Opacus adds seconds to the import of every process that merely
        # registers this trainer (the server, the CLI's config validation).
        from opacus import PrivacyEngine
        from opacus.optimizers import DPOptimizer
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        trained, original = _dp_compatible(model)
        mode = (
            choose_grad_sample_mode(trained)
            if self.grad_sample_mode == "auto"
            else self.grad_sample_mode
        )
        x, y = to_tensors(data)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant="rdp", secure_mode=self.secure_mode)
        # Restoring the history makes the accountant (and our epsilon) cover the whole run.
        engine.accountant.history = [tuple(e) for e in ledger.history]
        optimizer = sgd(trained, settings)
        params = [p for p in trained.parameters() if p.requires_grad]
        noise_generator = None
        if not self.secure_mode:
            noise_generator = torch.Generator().manual_seed(_derived_seed(settings.seed, 1))
        # make_private derives the sample rate 1 / len(loader) from this loader; we draw the
        # batches ourselves with the same Opacus sampler and rate (see the module docstring).
        rate_loader = DataLoader(TensorDataset(x, y), batch_size=settings.batch_size)
        private = engine.make_private(
            module=trained,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            data_loader=rate_loader,
            noise_multiplier=sigma,
            max_grad_norm=profile.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=mode,
            noise_generator=noise_generator,
        )
        module, dp_optimizer = private[0], private[1]
        criterion = private[2] if mode == "ghost" else nn.CrossEntropyLoss()
        assert isinstance(dp_optimizer, DPOptimizer)
        sampler = UniformWithReplacementSampler(
            num_samples=plan.num_samples,
            sample_rate=plan.sample_rate,
            generator=engine.secure_rng
            if self.secure_mode
            else torch.Generator().manual_seed(_derived_seed(settings.seed, 0)),
            steps=plan.steps,
        )
        mu = settings.proximal_mu
        anchor = [p.detach().clone() for p in params] if mu > 0 else []
        losses: list[float] = []
        try:
            module.train()
            with warnings.catch_warnings():
                # Opacus' hooks on a first layer whose input needs no grad make torch warn on
                # every backward pass; the per-sample gradients are still right.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                for indices in sampler:
                    dp_optimizer.zero_grad(set_to_none=True)
                    if indices:
                        batch = torch.as_tensor(indices, dtype=torch.long)
                        loss = criterion(module(x[batch]), y[batch])
                        loss.backward()
                        value = float(loss.detach())
                        if mu > 0:
                            with torch.no_grad():
                                value += float(proximal_term(trained, anchor, mu))
                        losses.append(value)
                    else:
                        _empty_batch(params, ghost=mode == "ghost")
                    if dp_optimizer.pre_step():  # clip, add noise, scale, account the step
                        if mu > 0:
                            for p, a in zip(params, anchor, strict=True):
                                assert p.grad is not None
                                p.grad.add_(p.detach() - a, alpha=mu)
                        dp_optimizer.original_optimizer.step()
        finally:
            module.to_standard_module()  # removes hooks, grad_sample and counters
            for p in params:
                for attr in ("summed_grad", "grad_sample"):
                    if hasattr(p, attr):
                        delattr(p, attr)
        history = validate_history(engine.accountant.history)
        accounted = sum(e.steps for e in history) - ledger.steps
        if accounted != plan.steps:  # would mean a step escaped the accountant
            raise RuntimeError(f"Opacus accounted {accounted} steps, planned {plan.steps}")
        if original is not None:
            original.load_state_dict(trained.state_dict())
        return losses, history


def _empty_batch(params: list[nn.Parameter], *, ghost: bool) -> None:
    """Make an empty Poisson batch a noise-only step, as the mechanism requires.

    Skipping the step would reveal that no sample was drawn; Opacus' ``ew`` and (for convs)
    ``functorch`` modes cannot run a zero-size batch, so the empty per-sample gradients are set
    directly and the optimiser adds the noise and accounts the step as usual.
    """
    for p in params:
        if ghost:
            p.grad = torch.zeros_like(p)
        else:
            p.grad_sample = p.new_zeros((0, *p.shape))  # type: ignore[attr-defined]


def _dp_compatible(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """Return ``(module to train, original to copy the weights back to or None)``.

    Opacus' ``ModuleValidator.fix`` returns a modified deep copy. That copy can be trained only
    if its state dict has the same keys and shapes as the original's, because the caller sends
    the original's ``state_dict()`` to the server (``BatchNorm -> GroupNorm`` does not qualify).

    Raises
    ------
    ConfigError
        If the model cannot be made DP-compatible with the same state-dict layout.
    """
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return model, None
    fixed = ModuleValidator.fix(model)
    remaining = ModuleValidator.validate(fixed, strict=False)
    before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    after = {k: tuple(v.shape) for k, v in fixed.state_dict().items()}
    if remaining or before != after:
        problems = "; ".join(str(e) for e in errors)
        raise ConfigError(
            f"model {type(model).__name__} cannot be trained with DP-SGD: {problems}. "
            + (
                f"Opacus' fix leaves: {'; '.join(str(e) for e in remaining)}. "
                if remaining
                else "Opacus' fix changes the model's state-dict layout, so the update would "
                "not match the global model. "
            )
            + "Use a model without BatchNorm (every model in fl_iot.models qualifies)."
        )
    return fixed, model


def _derived_seed(seed: int, stream: int) -> int:
    # Independent, non-negative 63-bit seeds for the sampling and noise streams of one seed.
    state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, 0xD9, stream]).generate_state(2)
    return int(state[0]) << 31 | int(state[1]) >> 1


def _metrics(
    profile: PrivacyProfile,
    plan: DpRoundPlan,
    sigma: float,
    ledger: PrivacyLedger,
    epsilon: float,
    *,
    exhausted: bool,
) -> dict[str, float]:
    target = profile.target_epsilon
    return {
        EPSILON: float(epsilon),
        DELTA: profile.delta,
        NOISE_MULTIPLIER: float(sigma),
        SAMPLE_RATE: plan.sample_rate,
        MAX_GRAD_NORM: profile.max_grad_norm,
        DP_STEPS: float(ledger.steps),
        EPSILON_REMAINING: math.inf if target is None else max(0.0, target - epsilon),
        BUDGET_EXHAUSTED: 1.0 if exhausted else 0.0,
    }
