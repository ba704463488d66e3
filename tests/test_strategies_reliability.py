"""Hand-computed cases for the weight factors and the reliability history."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from hypothesis import given
from hypothesis import strategies as st

from strategies import ReliabilityTracker, agreement_quality, bounded_quantity, combine_weights
from strategies.weighting import cap_shares, norm_clip_factors, weighted_metrics

# -- quantity, quality, weights ---------------------------------------------------------------


def test_bounded_quantity_caps_at_a_multiple_of_the_median() -> None:
    # Prepare: median of [10, 20, 30, 1000] is 25; cap 2 -> bound 50
    counts = np.array([10.0, 20.0, 30.0, 1000.0])
    # Execute
    bounded = bounded_quantity(counts, cap=2.0)
    # Assert: only the liar is cut, to exactly the bound
    assert bounded.tolist() == [10.0, 20.0, 30.0, 50.0]


def test_weight_inflation_gains_at_most_the_cap() -> None:
    # Prepare: 9 honest devices with 100 samples, one claims a billion
    honest = np.full(9, 100.0)
    for claim in (100.0, 300.0, 1e9):
        # Execute
        bounded = bounded_quantity(np.append(honest, claim), cap=3.0)
        share = bounded[-1] / bounded.sum()
        # Assert: never more than 3 honest devices' worth (3/12 of the total)
        assert share <= 3.0 / 12.0 + 1e-12


def test_agreement_quality_ramp_hand_computed() -> None:
    # soft 2, hard 4, floor 0.1: z=-3 is halfway down the ramp -> 1 - 0.9 * 0.5 = 0.55
    z = np.array([1.0, -2.0, -3.0, -4.0, -10.0, np.nan])
    quality = agreement_quality(z, soft_z=2.0, hard_z=4.0, min_quality=0.1)
    np.testing.assert_allclose(quality, [1.0, 1.0, 0.55, 0.1, 0.1, 1.0])


def test_norm_clip_factors_shrink_only_updates_above_the_bound() -> None:
    # median of [1, 2, 3, 30] is 2.5; ratio 3 -> bound 7.5, so 30 is shrunk by 7.5/30 = 0.25
    norms = np.array([1.0, 2.0, 3.0, 30.0, 0.0])
    assert norm_clip_factors(norms[:4], ratio=3.0).tolist() == [1.0, 1.0, 1.0, 0.25]
    assert norm_clip_factors(norms, ratio=None).tolist() == [1.0] * 5
    assert norm_clip_factors(norms, ratio=0.5).tolist() == [1.0, 0.5, 1 / 3, 1 / 30, 1.0]


def test_cap_shares_hand_computed() -> None:
    # 6 : 1 : 1 : 1 : 1 with cap 0.3 -> 0.3, and the remaining 0.7 shared equally by the rest;
    # 8 : 4 : 1 : 1 with cap 0.4 -> 8 and then 4 capped in turn: 0.4, 0.4, 0.1, 0.1
    assert cap_shares(np.array([6.0, 1, 1, 1, 1]), 0.3).tolist() == pytest.approx(
        [0.3, 0.175, 0.175, 0.175, 0.175]
    )
    assert cap_shares(np.array([8.0, 4, 1, 1]), 0.4).tolist() == pytest.approx([0.4, 0.4, 0.1, 0.1])
    assert cap_shares(np.array([5.0, 1.0]), 0.5).tolist() == [0.5, 0.5]
    assert cap_shares(np.zeros(4), 0.5).tolist() == [0.25] * 4
    with pytest.raises(ValueError, match="cannot hold 4 shares"):
        cap_shares(np.ones(4), 0.2)


@given(
    st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=30),
    st.floats(1.0, 5.0),
)
def test_cap_shares_sum_to_one_below_the_cap_and_keep_the_order(
    weights: list[float], ratio: float
) -> None:
    w = np.array(weights)
    shares = cap_shares(w, ratio / len(w))
    assert shares.sum() == pytest.approx(1.0)
    assert (shares <= ratio / len(w) + 1e-12).all()
    assert (shares >= 0).all()
    order = np.argsort(w, kind="stable")
    assert (np.diff(shares[order]) >= -1e-12).all()  # a larger weight never gets a smaller share


def test_combine_weights_is_the_product_of_the_factors() -> None:
    weights = combine_weights(np.array([10.0, 20.0]), np.array([1.0, 0.5]), np.array([0.5, 0.8]))
    assert weights.tolist() == [5.0, 8.0]


def test_weighted_metrics_equals_flowers_averaging() -> None:
    # Prepare
    records = [
        MetricRecord({"num-examples": 10, "loss": 1.0, "hist": [1.0, 2.0]}),
        MetricRecord({"num-examples": 30, "loss": 3.0, "hist": [3.0, 6.0]}),
    ]
    # Execute
    ours = weighted_metrics(records, [10.0, 30.0], ["loss", "hist"])
    theirs = aggregate_metricrecords([RecordDict({"m": r}) for r in records], "num-examples")
    # Assert: (10*1 + 30*3)/40 = 2.5 and [2.5, 5.0]
    assert ours == dict(theirs) == {"loss": 2.5, "hist": [2.5, 5.0]}


# -- reliability tracker ------------------------------------------------------------------------


def test_new_device_has_the_prior() -> None:
    assert ReliabilityTracker(prior=0.5).reliability("7") == 0.5
    assert ReliabilityTracker(prior=0.8, prior_strength=5.0).reliability("7") == 0.8


def test_reliability_after_completed_failed_and_late_rounds_hand_computed() -> None:
    # Prepare: α = β = 1 (prior 0.5, strength 2), decay 0.9, late 0.5, failure 1, anomaly 2
    tracker = ReliabilityTracker()
    # Execute / Assert, round by round
    tracker.observe("a", 1, "completed")
    assert tracker.reliability("a", 1) == 0.5  # round 1's own event is not used in round 1
    assert tracker.reliability("a", 2) == pytest.approx(2 / 3)  # G=1: (1+1)/(2+1)
    tracker.observe("a", 2, "failed")
    # G=0.9, F=1: (1+0.9)/(2+0.9+1)
    assert tracker.reliability("a", 3) == pytest.approx(1.9 / 3.9)
    tracker.observe("a", 3, "late")
    # G=0.81, F=0.9, L=1: (1.81)/(2+0.81+0.9+0.5)
    assert tracker.reliability("a", 4) == pytest.approx(1.81 / 4.21)


def test_anomaly_share_of_an_accepted_update_counts_against_reliability() -> None:
    tracker = ReliabilityTracker()
    tracker.observe("a", 1, "completed", anomaly=0.25)
    # G = 0.75, A = 0.25 -> (1 + 0.75) / (2 + 0.75 + 2 * 0.25)
    assert tracker.reliability("a", 2) == pytest.approx(1.75 / 3.25)


def test_rejected_device_recovers_with_decay() -> None:
    # Prepare: one rejection, then clean rounds
    tracker = ReliabilityTracker(decay=0.9)
    tracker.observe("a", 1, "rejected")
    after_rejection = tracker.reliability("a", 2)
    assert after_rejection == pytest.approx(1 / (2 + 2))  # A=1 weighs 2
    previous = after_rejection
    # Execute: k clean rounds -> A = 0.9**k, G = sum of 0.9**j for j < k
    for k in range(1, 31):
        tracker.observe("a", 1 + k, "completed")
        current = tracker.reliability("a", 2 + k)
        good = sum(0.9**j for j in range(k))
        # Assert: the closed form, and strictly rising
        assert current == pytest.approx((1 + good) / (2 + good + 2 * 0.9**k))
        assert current > previous
        previous = current
    # After 30 clean rounds it is within 1 % of a device that was never rejected
    clean = ReliabilityTracker(decay=0.9)
    for r in range(1, 32):
        clean.observe("b", r, "completed")
    assert previous == pytest.approx(clean.reliability("b", 32), rel=0.01)


def test_no_decay_never_forgets() -> None:
    tracker = ReliabilityTracker(decay=1.0)
    tracker.observe("a", 1, "rejected")
    for r in range(2, 12):
        tracker.observe("a", r, "completed")
    # G = 10, A = 1 -> (1 + 10)/(2 + 10 + 2)
    assert tracker.reliability("a", 12) == pytest.approx(11 / 14)


def test_same_round_twice_keeps_the_most_severe_outcome_once() -> None:
    # Prepare: a wrapper records "rejected", the wrapped strategy later sees "late"
    tracker = ReliabilityTracker()
    tracker.observe("a", 1, "rejected")
    tracker.observe("a", 1, "late")
    tracker.observe("b", 1, "completed", anomaly=0.2)
    tracker.observe("b", 1, "completed", anomaly=0.1)
    # Assert: one observation each, with the worse outcome / larger anomaly
    assert tracker.history("a", 2) == {
        "good": 0.0,
        "late": 0.0,
        "failed": 0.0,
        "anomaly": 1.0,
        "observations": 1,
    }
    assert tracker.history("b", 2)["anomaly"] == pytest.approx(0.2)


def test_rarely_sampled_device_keeps_its_evidence() -> None:
    # Decay is per observation: ten rounds without being sampled change nothing.
    tracker = ReliabilityTracker()
    tracker.observe("a", 1, "completed")
    assert tracker.reliability("a", 2) == tracker.reliability("a", 12)


def test_mean_direction_hand_computed() -> None:
    # Prepare: decay 0.5; a pseudo-observation at 0 (weight 1) shrinks every mean
    tracker = ReliabilityTracker(decay=0.5)
    # Execute / Assert: a new device, this round only: (0 + z) / (1 + 1)
    assert tracker.mean_direction("a", -3.0, 1) == pytest.approx(-1.5)
    tracker.observe("a", 1, "completed", direction=-3.0)
    assert tracker.mean_direction("a", -3.0, 1) == pytest.approx(-1.5)  # round 1 is not history
    # Round 2: history S=-3, W=1; with this round's -1: (-3 - 1) / (1 + 1 + 1)
    assert tracker.mean_direction("a", -1.0, 2) == pytest.approx(-4 / 3)
    tracker.observe("a", 2, "completed", direction=-10.0)  # clipped to -4
    # Round 3: S = 0.5·(-3) - 4 = -5.5, W = 0.5 + 1 = 1.5; this round 2.0 is clipped to 1
    assert tracker.mean_direction("a", 2.0, 3) == pytest.approx((-5.5 + 1.0) / (1 + 1.5 + 1))
    # Not scored this round (NaN): the history alone
    assert tracker.mean_direction("a", float("nan"), 3) == pytest.approx(-5.5 / 2.5)


def test_direction_seen_twice_keeps_the_lower_and_rounds_without_one_add_nothing() -> None:
    tracker = ReliabilityTracker(decay=1.0)
    tracker.observe("a", 1, "completed", direction=-1.0)
    tracker.observe("a", 1, "rejected", direction=-2.0)
    tracker.observe("a", 2, "late")  # no direction
    tracker.observe("a", 3, "completed", direction=float("nan"))
    # History: only round 1's -2 (weight 1)
    assert tracker.mean_direction("a", float("nan"), 4) == pytest.approx(-2.0 / 2)


def test_persistent_attacker_sinks_while_an_occasional_outlier_recovers() -> None:
    # An honest device with an unusual data mix points away once in a while; an attacker does so
    # every round, a little less far. Over rounds only the attacker's mean stays low.
    tracker = ReliabilityTracker()
    honest = [-3.0, 0.5, 0.2, -0.5, 0.8, 0.1, 0.4, -0.2]
    attacker = [-1.8, -2.0, -1.6, -2.2, -1.9, -1.7, -2.1, -1.8]
    for server_round, (h, a) in enumerate(zip(honest, attacker, strict=True), start=1):
        tracker.observe("h", server_round, "completed", direction=h)
        tracker.observe("x", server_round, "completed", direction=a)
    assert tracker.mean_direction("h", 0.0, 9) > -0.5
    assert tracker.mean_direction("x", -1.8, 9) < -1.5


def test_state_dict_round_trips_through_json() -> None:
    # Prepare
    tracker = ReliabilityTracker(decay=0.8, prior=0.6)
    tracker.observe("a", 1, "completed", anomaly=0.5, direction=-2.0)
    tracker.observe("a", 2, "failed")  # still pending at save time
    tracker.observe("b", 1, "late")
    # Execute
    restored = ReliabilityTracker()
    restored.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    # Assert: same parameters and the same future
    assert restored.decay == 0.8 and restored.prior == 0.6
    for device in ("a", "b", "new"):
        assert restored.reliability(device, 3) == tracker.reliability(device, 3)
        assert restored.mean_direction(device, -1.0, 3) == tracker.mean_direction(device, -1.0, 3)


def test_load_state_dict_rejects_foreign_state() -> None:
    with pytest.raises(ValueError, match="version"):
        ReliabilityTracker().load_state_dict({"version": 99})


def test_the_state_is_plain_json_and_a_record_with_foreign_fields_is_refused() -> None:
    # Prepare
    tracker = ReliabilityTracker()
    tracker.observe("a", 1, "completed", anomaly=0.25, direction=-1.0)
    state = tracker.state_dict()
    # Assert: the pending event is a plain dict in the state
    assert state["devices"]["a"]["pending"] == {
        "round": 1,
        "outcome": "completed",
        "anomaly": 0.25,
        "direction": -1.0,
    }
    assert json.loads(json.dumps(state)) == state
    for broken in (
        {**state["devices"]["a"], "extra": 1},
        {**state["devices"]["a"], "pending": {"round": 1, "outcome": "completed"}},
    ):
        with pytest.raises(ValueError, match="device 'a': expected fields"):
            ReliabilityTracker().load_state_dict({**state, "devices": {"a": broken}})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"decay": 0.0}, r"decay must be in \(0.0, 1.0\]", id="decay-zero"),
        pytest.param({"decay": 1.5}, "decay", id="decay-above-one"),
        pytest.param({"prior": 1.0}, r"prior must be in \(0, 1\)", id="prior-one"),
        pytest.param({"prior_strength": 0}, "prior_strength", id="strength-zero"),
        pytest.param({"late_penalty": -1}, "late_penalty", id="negative-penalty"),
        pytest.param({"anomaly_penalty": float("nan")}, "anomaly_penalty", id="nan-penalty"),
    ],
)
def test_tracker_rejects_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReliabilityTracker(**kwargs)


def test_observe_rejects_unknown_outcomes_and_anomalies_outside_unit_interval() -> None:
    tracker = ReliabilityTracker()
    with pytest.raises(ValueError, match="outcome must be one of"):
        tracker.observe("a", 1, "exploded")
    with pytest.raises(ValueError, match="anomaly"):
        tracker.observe("a", 1, "completed", anomaly=1.5)
