"""Privacy accounting: Opacus RDP vs dp-accounting RDP/PLD, calibration, central DP, profiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from clients.privacy import (
    RDP_ORDERS,
    DpSgdEvent,
    PrivacyLedger,
    PrivacyProfile,
    calibrate_noise_multiplier,
    central_dp_epsilon,
    epsilon_opacus_rdp,
    epsilon_pld,
    epsilon_rdp,
    privacy_summary,
    validate_history,
)
from clients.privacy.rdp import rdp_sampled_gaussian
from fl_iot.errors import ConfigError

DELTA = 1e-5

# (noise multiplier, sample rate, steps) as the device classes produce them: a few rounds of a
# few epochs at batch/n between 1/30 and 1/4, and one mixed history (noise changed mid-run).
HISTORIES = [
    pytest.param([(1.0, 1 / 16, 48)], id="sigma1-q16-48"),
    pytest.param([(0.8, 1 / 30, 600)], id="sigma0.8-q30-600"),
    pytest.param([(2.0, 1 / 4, 40)], id="sigma2-q4-40"),
    pytest.param([(1.3, 1 / 8, 16), (0.9, 1 / 10, 30)], id="mixed"),
]


@pytest.mark.parametrize("history", HISTORIES)
def test_opacus_rdp_matches_dp_accounting_rdp_within_one_percent(history):
    opacus = epsilon_opacus_rdp(history, DELTA)
    reference = epsilon_rdp(history, DELTA)
    assert opacus == pytest.approx(reference, rel=0.01)


@pytest.mark.parametrize("history", HISTORIES[:2])
def test_pld_is_tighter_than_rdp(history):
    rdp = epsilon_rdp(history, DELTA)
    pld = epsilon_pld(history, DELTA, value_discretization_interval=1e-3)
    assert 0 < pld <= rdp + 1e-3
    assert pld > 0.5 * rdp, "PLD and RDP bound the same mechanism; they cannot be far apart"


def test_cached_opacus_epsilon_equals_opacus_accountant():
    # What the trainer reports (cached per-step curves) is exactly Opacus' RDPAccountant.
    from opacus.accountants import RDPAccountant

    history = [(1.3, 1 / 8, 16), (0.9, 1 / 10, 30)]
    accountant = RDPAccountant()
    accountant.history = list(history)
    expected = accountant.get_epsilon(DELTA, alphas=list(RDP_ORDERS))
    assert epsilon_opacus_rdp(history, DELTA) == pytest.approx(expected, rel=1e-9)
    assert tuple(RDP_ORDERS[: len(RDPAccountant.DEFAULT_ALPHAS)]) == tuple(
        RDPAccountant.DEFAULT_ALPHAS
    )


@pytest.mark.parametrize("sample_rate", [0.002, 1 / 16, 0.5, 1.0])
@pytest.mark.parametrize("sigma", [0.4, 1.0, 8.0])
def test_vectorised_rdp_equals_opacus_series(sample_rate, sigma):
    from opacus.accountants.analysis.rdp import compute_rdp

    orders = [1.1, 1.5, 2.0, 2.7, 5.0, 9.9, 32.0, 63.0, 256.0]
    expected = compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=1, orders=orders)
    actual = rdp_sampled_gaussian(sample_rate, sigma, orders)
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-12)


def test_epsilon_grows_with_steps_and_falls_with_noise():
    base = epsilon_opacus_rdp([(1.0, 0.1, 50)], DELTA)
    assert epsilon_opacus_rdp([(1.0, 0.1, 100)], DELTA) > base
    assert epsilon_opacus_rdp([(2.0, 0.1, 50)], DELTA) < base
    assert epsilon_opacus_rdp([], DELTA) == 0.0
    assert epsilon_opacus_rdp([(0.0, 0.1, 1)], DELTA) == math.inf


@pytest.mark.parametrize(
    ("target", "sample_rate", "steps"),
    [(3.0, 1 / 16, 160), (8.0, 1 / 8, 400), (1.0, 1 / 4, 20)],
)
def test_calibrated_noise_reaches_the_target_at_the_planned_steps(target, sample_rate, steps):
    from opacus.accountants import RDPAccountant

    sigma = calibrate_noise_multiplier(target, DELTA, sample_rate, steps)

    # Opacus' own accountant, at the orders the trainer uses.
    accountant = RDPAccountant()
    accountant.history = [(sigma, sample_rate, steps)]
    spent = accountant.get_epsilon(DELTA, alphas=list(RDP_ORDERS))
    assert target * 0.99 <= spent <= target
    # Independently, with dp-accounting's RDP accountant.
    assert epsilon_rdp([(sigma, sample_rate, steps)], DELTA) == pytest.approx(target, rel=0.01)
    # Twice the planned steps would go over budget.
    assert epsilon_opacus_rdp([(sigma, sample_rate, 2 * steps)], DELTA) > target


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_epsilon": 0.0}, r"target_epsilon must be a finite number > 0, got 0.0"),
        ({"delta": 1.0}, r"delta must be in \(0, 1\), got 1.0"),
        ({"sample_rate": 0.0}, r"sample_rate must be in \(0, 1\], got 0.0"),
        ({"steps": 0}, r"must have >= 1 step to calibrate noise, got 0"),
    ],
)
def test_calibration_rejects_bad_parameters(kwargs, message):
    args = {"target_epsilon": 3.0, "delta": DELTA, "sample_rate": 0.1, "steps": 10} | kwargs
    with pytest.raises(ConfigError, match=message):
        calibrate_noise_multiplier(**args)


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ([(-1.0, 0.1, 1)], r"history\[0\].noise_multiplier must be >= 0, got -1.0"),
        ([(1.0, 0.0, 1)], r"history\[0\].sample_rate must be in \(0, 1\], got 0.0"),
        ([(1.0, 0.1, 1), (1.0, 0.1, 2.5)], r"history\[1\].steps must be an integer >= 0"),
        ([(1.0, 0.1)], r"history\[0\] must be \(noise_multiplier, sample_rate, steps\)"),
    ],
)
def test_bad_history_names_the_event(history, message):
    with pytest.raises(ValueError, match=message):
        validate_history(history)


def test_bad_delta_is_rejected():
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\), got 0"):
        epsilon_rdp([(1.0, 0.1, 1)], 0)


# --- central DP -----------------------------------------------------------------------------------


def test_central_dp_without_amplification_is_composed_gaussian():
    # k rounds of a Gaussian mechanism with multiplier z are one Gaussian with multiplier
    # z / sqrt(k); dp-accounting's analytic Gaussian gives its exact epsilon.
    from dp_accounting import get_epsilon_gaussian

    z, k = 1.5, 20
    exact = get_epsilon_gaussian(z / math.sqrt(k), DELTA)
    pld = central_dp_epsilon([(z, 0.3, k)], DELTA, accountant="pld")
    rdp = central_dp_epsilon([(z, 0.3, k)], DELTA)
    assert pld == pytest.approx(exact, rel=0.01)
    # RDP of a Gaussian is alpha * k / (2 z^2): the hand-written conversion over the same orders.
    orders = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128])
    by_hand = min(
        a * k / (2 * z**2) + math.log1p(-1 / a) - math.log(DELTA * a) / (a - 1) for a in orders
    )
    assert rdp == pytest.approx(by_hand, rel=0.01)
    assert pld <= rdp


def test_central_dp_poisson_amplification_lowers_epsilon():
    rounds = [(1.0, 0.1, 50)]
    none = central_dp_epsilon(rounds, DELTA)
    poisson = central_dp_epsilon(rounds, DELTA, amplification="poisson")
    assert poisson < 0.5 * none
    with pytest.raises(ValueError, match="accountant must be 'rdp' or 'pld', got 'prv'"):
        central_dp_epsilon(rounds, DELTA, accountant="prv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sampling must be 'poisson' or 'none', got 'shuffle'"):
        central_dp_epsilon(rounds, DELTA, amplification="shuffle")  # type: ignore[arg-type]


# --- ledger in context.state --------------------------------------------------------------------


def test_ledger_round_trips_through_a_flower_record_dict():
    ledger = PrivacyLedger(
        history=[DpSgdEvent(1.0, 0.125, 16), DpSgdEvent(2.0, 0.1, 3)],
        calibrated_noise_multiplier=1.25,
        declined_rounds=1,
    )
    state = RecordDict()
    ledger.save(state)

    assert isinstance(state["dp-sgd-ledger"], ConfigRecord)
    assert PrivacyLedger.load(state) == ledger
    assert PrivacyLedger.load(RecordDict()) == PrivacyLedger()
    assert ledger.steps == 19


def test_ledger_refuses_a_corrupt_record():
    state = RecordDict()
    PrivacyLedger(history=[DpSgdEvent(1.0, 0.125, 16)]).save(state)
    state["dp-sgd-ledger"]["steps"] = [16, 3]  # type: ignore[index]
    with pytest.raises(ValueError, match="is corrupt: 1 noise multipliers, 1 sample rates and 2"):
        PrivacyLedger.load(state)
    state["dp-sgd-ledger"]["schema-version"] = 99  # type: ignore[index]
    with pytest.raises(ValueError, match="has ledger schema 99; this version reads schema 1"):
        PrivacyLedger.load(state)


# --- profiles -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"target_epsilon": -1.0}, r"privacy.target_epsilon must be a finite number > 0"),
        ({"target_epsilon": 3.0, "delta": 0.0}, r"privacy.delta must be in \(0, 1\), got 0.0"),
        ({"target_epsilon": 3.0, "max_grad_norm": 0}, r"max_grad_norm must be a finite number"),
        ({"noise_multiplier": -0.5}, r"privacy.noise_multiplier must be a finite number >= 0"),
        ({"target_epsilon": None}, r"needs target_epsilon \(to calibrate the noise\)"),
        ({"target_epsilon": "high"}, r"privacy.target_epsilon must be a number, got 'high'"),
        ({"target_epsilon": 3.0, "epsilon": 1}, r"unknown privacy setting\(s\) epsilon"),
    ],
)
def test_bad_profiles_name_the_value_and_range(values, message):
    with pytest.raises(ConfigError, match=message):
        PrivacyProfile.from_mapping(values)


def test_profile_defaults():
    profile = PrivacyProfile.from_mapping({"target_epsilon": 3})
    assert profile == PrivacyProfile(target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0)


# --- fleet summary --------------------------------------------------------------------------------


def test_fleet_summary_reports_the_worst_device():
    replies = [
        {"num-examples": 100, "epsilon": 1.5, "delta": 1e-5, "budget-exhausted": 0.0},
        {"num-examples": 10, "epsilon": 2.9, "delta": 1e-5, "budget-exhausted": 1.0},
        {"num-examples": 50, "train-loss": 0.3},  # a non-private device
    ]
    summary = privacy_summary(replies)
    assert summary == {
        "epsilon-max": 2.9,
        "delta-max": 1e-5,
        "epsilon-mean": pytest.approx(2.2),
        "private-devices": 2.0,
        "budget-exhausted-devices": 1.0,
    }
    assert privacy_summary([{"num-examples": 5}]) == {}
    with pytest.raises(ValueError, match="metric 'epsilon' must be a number, got 'high'"):
        privacy_summary([{"epsilon": "high"}])
