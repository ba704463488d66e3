"""The simulated attacks on tiny hand-computed arrays (no training, no Flower)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clients import ATTACKS, Attack, AttackContext, build_attack
from clients.attacks import COLLUSION_CACHE, alie_update, alie_z, ipm_update
from clients.attacks.data import LabelFlip
from clients.data import LabeledData
from fl_iot.errors import ConfigError, UnknownNameError
from fl_iot.federation import build_federation

# A global model with a float weight, a float bias and an integer buffer (BatchNorm's counter).
GLOBAL = {
    "w": np.array([1.0, 2.0], dtype=np.float32),
    "b": np.array([0.0], dtype=np.float32),
    "count": np.array([5], dtype=np.int64),
}
# The attacker's honest training moved w by (+1, -2) and b by +1, and counted one more batch.
LOCAL = {
    "w": np.array([2.0, 0.0], dtype=np.float32),
    "b": np.array([1.0], dtype=np.float32),
    "count": np.array([6], dtype=np.int64),
}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def poison(name: str, **options: object):
    return build_attack(name, options).poison_update(GLOBAL, LOCAL, 7, rng())


def assert_model(arrays, w, b):
    assert list(arrays) == ["w", "b", "count"]  # same keys, same order
    np.testing.assert_allclose(arrays["w"], w)
    np.testing.assert_allclose(arrays["b"], b)
    assert arrays["w"].dtype == np.float32
    # Integer buffers are counters, not weights: sent as the honest model has them.
    np.testing.assert_array_equal(arrays["count"], [6])


# ---- registry and options ----------------------------------------------------------------------


def test_every_attack_is_registered():
    assert set(ATTACKS.names()) >= {
        "none",
        "sign_flip",
        "gaussian",
        "scaling",
        "label_flip",
        "alie",
        "ipm",
        "weight_inflation",
    }


def test_an_unknown_attack_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as caught:
        ATTACKS.get("sign_flop")
    message = str(caught.value)
    assert "sign_flop" in message
    for name in ("alie", "gaussian", "ipm", "label_flip", "none", "scaling", "sign_flip"):
        assert name in message


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("sign_flip", {"scale": -1.0}, "option scale must be a finite number > 0, got -1.0"),
        ("gaussian", {"std": 0}, "option std must be a finite number > 0, got 0"),
        ("scaling", {"factor": "ten"}, "option factor must be a finite number > 0, got 'ten'"),
        ("ipm", {"epsilon": float("nan")}, "option epsilon must be a finite number > 0, got nan"),
        ("weight_inflation", {"factor": True}, "option factor must be a finite number > 0"),
        ("alie", {"z": "big"}, "option z must be a finite number, got 'big'"),
        ("label_flip", {"mapping": [0, -1]}, "got [0, -1]"),
        ("gaussian", {"stdd": 2.0}, "unknown option 'stdd' for attack 'gaussian'"),
        ("none", {"scale": 2.0}, "attack 'none' (attack.options.scale); valid options: (none)"),
    ],
)
def test_bad_options_fail_with_a_config_error_naming_the_value(name, options, expected):
    with pytest.raises(ConfigError) as caught:
        build_attack(name, options)
    assert expected in str(caught.value)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"valid options: scale$"):
        build_attack("sign_flip", {"factor": 2})


def test_none_is_honest():
    sent = build_attack("none").poison_update(GLOBAL, LOCAL, 7, rng())
    assert sent.arrays is LOCAL
    assert sent.num_examples == 7


# ---- update attacks, by hand ---------------------------------------------------------------------


def test_sign_flip_sends_the_reversed_scaled_update():
    # global - 2 * (local - global): w = (1, 2) - 2 * (1, -2) = (-1, 6); b = 0 - 2 * 1 = -2.
    sent = poison("sign_flip", scale=2.0)
    assert_model(sent.arrays, [-1.0, 6.0], [-2.0])
    assert sent.num_examples == 7


def test_sign_flip_default_mirrors_the_update():
    assert_model(poison("sign_flip").arrays, [0.0, 4.0], [-1.0])


def test_scaling_boosts_the_update():
    # global + 10 * (local - global): w = (1 + 10, 2 - 20); b = 10.
    sent = poison("scaling", factor=10)
    assert_model(sent.arrays, [11.0, -18.0], [10.0])
    assert sent.num_examples == 7


def test_weight_inflation_keeps_the_update_and_inflates_the_count():
    sent = poison("weight_inflation", factor=100)
    assert sent.arrays is LOCAL
    assert sent.num_examples == 700
    assert poison("weight_inflation", factor=0.01).num_examples == 1  # never below one example


def test_gaussian_replaces_the_update_by_seeded_noise():
    attack = build_attack("gaussian", {"std": 0.5})
    first = attack.poison_update(GLOBAL, LOCAL, 7, rng(3))
    again = attack.poison_update(GLOBAL, LOCAL, 7, rng(3))
    other_seed = attack.poison_update(GLOBAL, LOCAL, 7, rng(4))
    other_local = attack.poison_update(GLOBAL, {**LOCAL, "w": LOCAL["w"] * 9}, 7, rng(3))

    expected = np.random.default_rng(3)
    noise_w, noise_b = expected.normal(0, 0.5, 2), expected.normal(0, 0.5, 1)
    assert_model(first.arrays, GLOBAL["w"] + noise_w, GLOBAL["b"] + noise_b)
    for key in GLOBAL:
        np.testing.assert_array_equal(first.arrays[key], again.arrays[key])
        # The honest update plays no part: noise replaces it.
        np.testing.assert_array_equal(first.arrays[key], other_local.arrays[key])
    assert not np.array_equal(first.arrays["w"], other_seed.arrays["w"])
    assert first.num_examples == 7


def test_gaussian_noise_has_the_configured_spread():
    big = {"w": np.zeros(20_000, dtype=np.float32)}
    sent = build_attack("gaussian", {"std": 0.5}).poison_update(big, big, 1, rng())
    assert abs(float(sent.arrays["w"].std()) - 0.5) < 0.01
    assert abs(float(sent.arrays["w"].mean())) < 0.01


# ---- label flipping ------------------------------------------------------------------------------


def test_label_flip_reverses_labels_and_changes_nothing_else():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0, 1, 2, 4], dtype=np.int64)
    data = LabeledData(x, y)

    flipped = build_attack("label_flip").poison_data(data, 5, rng())

    np.testing.assert_array_equal(flipped.y, [4, 3, 2, 0])  # y -> 5 - 1 - y
    assert flipped.y.dtype == np.int64
    assert flipped.x is x  # features untouched, same order, same count
    np.testing.assert_array_equal(y, [0, 1, 2, 4])  # the device's own data is not modified


def test_label_flip_with_a_mapping_is_a_targeted_flip():
    data = LabeledData(np.zeros((4, 1), dtype=np.float32), np.array([0, 1, 2, 1]))
    flipped = build_attack("label_flip", {"mapping": [0, 0, 2]}).poison_data(data, 3, rng())
    np.testing.assert_array_equal(flipped.y, [0, 0, 2, 0])


def test_label_flip_mapping_must_fit_the_dataset():
    data = LabeledData(np.zeros((2, 1), dtype=np.float32), np.array([0, 1]))
    attack = LabelFlip(mapping=[1, 0, 2])
    with pytest.raises(ConfigError, match=r"one entry per class.*2 classes; got \[1, 0, 2\]"):
        attack.poison_data(data, 2, rng())


def test_label_flip_sends_its_honest_update():
    sent = build_attack("label_flip").poison_update(GLOBAL, LOCAL, 7, rng())
    assert sent.arrays is LOCAL
    assert sent.num_examples == 7


# ---- colluding attacks ---------------------------------------------------------------------------

# Two colluders' honest updates: w moved by (1, 2) and (3, -4); b by 0.5 and 1.5.
COLLUDER_DELTAS = {
    4: {"w": np.array([1.0, 2.0]), "b": np.array([0.5])},
    9: {"w": np.array([3.0, -4.0]), "b": np.array([1.5])},
}


def fake_context(device_id: int = 4, calls: list[int] | None = None, **kw) -> AttackContext:
    """A round in which devices 4 and 9 collude, with honest updates COLLUDER_DELTAS."""

    def honest_update_of(j: int) -> dict[str, np.ndarray]:
        if calls is not None:
            calls.append(j)
        return {
            "w": (GLOBAL["w"] + COLLUDER_DELTAS[j]["w"]).astype(np.float32),
            "b": (GLOBAL["b"] + COLLUDER_DELTAS[j]["b"]).astype(np.float32),
            "count": np.array([6], dtype=np.int64),
        }

    fields = {
        "device_id": device_id,
        "server_round": 1,
        "colluders": (4, 9),
        "num_sampled": 6,
        "num_attackers": 2,
        "run_key": "test-run",
        "honest_update_of": honest_update_of,
    }
    fields.update(kw)
    return AttackContext(**fields)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def fresh_collusion_cache():
    COLLUSION_CACHE.clear()
    yield
    COLLUSION_CACHE.clear()


@pytest.mark.parametrize(
    ("n", "f", "z"),
    [
        (6, 2, 0.4307273),  # s = floor(4) - 2 = 2: Phi^-1(4 / 6)
        (50, 12, 0.5828415),  # s = 26 - 12 = 14: Phi^-1(36 / 50)
        (10, 1, 0.0),  # s = 6 - 1 = 5: Phi^-1(1 / 2)
        (6, 4, 0.9674216),  # attackers' majority: s = 0 clamps to 1, Phi^-1(5 / 6)
    ],
)
def test_alie_z_follows_the_paper(n, f, z):
    assert alie_z(n, f) == pytest.approx(z, abs=1e-6)


def test_alie_sends_mu_minus_z_sigma():
    # Per coordinate over the two updates: mu = (2, -1), b: 1.0; sample std (ddof=1):
    # sigma_w = (sqrt(2), sqrt(18)), sigma_b = sqrt(0.5).
    sqrt2, sqrt18, sqrt_half = math.sqrt(2), math.sqrt(18), math.sqrt(0.5)
    crafted = alie_update(list(COLLUDER_DELTAS.values()), z=0.5)
    np.testing.assert_allclose(crafted["w"], [2 - 0.5 * sqrt2, -1 - 0.5 * sqrt18])
    np.testing.assert_allclose(crafted["b"], [1 - 0.5 * sqrt_half])

    z = alie_z(6, 2)
    sent = build_attack("alie").poison_update(GLOBAL, LOCAL, 7, rng(), fake_context())
    assert_model(
        sent.arrays,
        [1 + 2 - z * sqrt2, 2 - 1 - z * sqrt18],
        [0 + 1 - z * sqrt_half],
    )
    assert sent.num_examples == 7


def test_alie_z_option_overrides_the_formula():
    sent = build_attack("alie", {"z": 1.0}).poison_update(GLOBAL, LOCAL, 7, rng(), fake_context())
    np.testing.assert_allclose(sent.arrays["w"], [3 - math.sqrt(2), 1 - math.sqrt(18)], rtol=1e-6)


def test_alie_with_a_single_colluder_sends_its_honest_update():
    crafted = alie_update([COLLUDER_DELTAS[4]], z=1.5)
    np.testing.assert_allclose(crafted["w"], [1.0, 2.0])


def test_ipm_sends_minus_epsilon_mu():
    # mu = ((1 + 3) / 2, (2 - 4) / 2) = (2, -1), b: 1.0; -0.5 * mu = (-1, 0.5), b: -0.5.
    crafted = ipm_update(list(COLLUDER_DELTAS.values()), epsilon=0.5)
    np.testing.assert_allclose(crafted["w"], [-1.0, 0.5])
    np.testing.assert_allclose(crafted["b"], [-0.5])

    sent = build_attack("ipm", {"epsilon": 0.5}).poison_update(
        GLOBAL, LOCAL, 7, rng(), fake_context()
    )
    assert_model(sent.arrays, [0.0, 2.5], [-0.5])
    assert sent.num_examples == 7


@pytest.mark.parametrize("name", ["alie", "ipm"])
def test_colluders_send_the_same_update_and_share_the_reconstruction(name):
    calls: list[int] = []
    attack = build_attack(name)

    first = attack.poison_update(GLOBAL, LOCAL, 7, rng(), fake_context(4, calls))
    # The other colluder, with a different own update, on the same worker.
    second = attack.poison_update(
        GLOBAL, {**LOCAL, "w": LOCAL["w"] * 3}, 7, rng(1), fake_context(9, calls)
    )

    for key in GLOBAL:
        np.testing.assert_array_equal(first.arrays[key], second.arrays[key])
    assert calls == [4, 9]  # each colluder trained once, for both attackers
    assert (COLLUSION_CACHE.misses, COLLUSION_CACHE.hits) == (1, 1)


def test_a_new_round_or_model_recomputes_the_colluders():
    calls: list[int] = []
    attack = build_attack("ipm")
    attack.poison_update(GLOBAL, LOCAL, 7, rng(), fake_context(4, calls))
    attack.poison_update(GLOBAL, LOCAL, 7, rng(), fake_context(4, calls, server_round=2))
    moved = {**GLOBAL, "w": GLOBAL["w"] + 1}
    attack.poison_update(moved, LOCAL, 7, rng(), fake_context(4, calls, server_round=2))
    assert calls == [4, 9] * 3


@pytest.mark.parametrize("name", ["alie", "ipm"])
def test_colluding_attacks_need_the_round_context(name):
    attack: Attack = build_attack(name)
    assert attack.colluding
    with pytest.raises(ValueError, match="needs the AttackContext"):
        attack.poison_update(GLOBAL, LOCAL, 7, rng())


# ---- who attacks ---------------------------------------------------------------------------------


def test_the_seed_chooses_the_attackers():
    keys = [str(i) for i in range(20)]

    def attackers(seed: int) -> frozenset[int]:
        return build_federation(keys, {"wearable": 1.0}, 0.25, seed).attackers

    assert len(attackers(0)) == 5
    assert attackers(0) == attackers(0)
    assert attackers(0) != attackers(1)
