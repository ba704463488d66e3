"""Robust statistics and anomaly scores of strategies.scoring, on tiny hand-made inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from strategies import AnomalyThresholds, anomaly_scores, robust_center_scale, update_statistics
from strategies.arrays import ModelSpec
from strategies.robust import row_median
from strategies.sample import SamplePlan, gather_sample
from strategies.scoring import agreement_z, backward_pull, history_anomaly
from strategies.statistics import (
    UpdateStatistics,
    median_cosine,
    nearest_relative_distance,
    output_layer_cosine,
)


def test_robust_center_scale_of_a_clean_normal_sample_is_consistent() -> None:
    x = np.random.default_rng(0).normal(5.0, 2.0, size=20_000)
    center, scale = robust_center_scale(x)
    assert center == pytest.approx(5.0, abs=0.05)
    assert scale == pytest.approx(2.0, rel=0.03)


def test_robust_center_scale_ignores_40_percent_on_one_side() -> None:
    # Prepare: 60 % N(0, 1) and 40 % far to the left (a one-sided attack)
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0.0, 1.0, 6000), rng.normal(-12.0, 0.1, 4000)])
    # Execute
    center, scale = robust_center_scale(x)
    # Assert: the honest mode and (nearly) its spread; median/MAD would be dragged far away
    assert abs(center) < 0.3
    assert 0.8 < scale < 1.3
    mad_scale = 1.4826 * np.median(np.abs(x - np.median(x)))
    assert mad_scale > 2.5 * scale


def test_robust_center_scale_floors() -> None:
    center, scale = robust_center_scale(np.full(10, 3.0), floor=0.1)
    assert (center, scale) == (3.0, 0.1)
    center, scale = robust_center_scale(np.full(10, 0.5), floor=0.01, relative_floor=0.2)
    assert scale == pytest.approx(0.1)
    assert np.isnan(robust_center_scale(np.array([np.nan]))[0])


@pytest.mark.parametrize("n", [1, 2, 7, 8, 1000])
def test_row_median_equals_numpy_median(n: int) -> None:
    x = np.random.default_rng(n).standard_normal((33, n)).astype(np.float32)
    expected = np.median(x, axis=1)
    np.testing.assert_allclose(row_median(x.copy()), expected, rtol=1e-6)


def test_sample_plan_is_seeded_and_spans_float_arrays_only() -> None:
    # Prepare: 3 float arrays (1000 coordinates) and an int buffer that must not be sampled
    record = ArrayRecord(
        {
            "a": Array(np.zeros(600, np.float32)),
            "steps": Array(np.zeros(5, np.int64)),
            "b": Array(np.zeros((20, 15), np.float32)),
            "c": Array(np.zeros(100, np.float64)),
        }
    )
    spec = ModelSpec.from_arrayrecord(record)
    # Execute
    plan = SamplePlan.draw(spec, size=64, seed=3, server_round=2)
    again = SamplePlan.draw(spec, size=64, seed=3, server_round=2)
    other = SamplePlan.draw(spec, size=64, seed=3, server_round=3)
    # Assert
    assert plan.size == 64
    assert [k for k, _, _ in plan.parts] == [
        k for k in ("a", "b", "c") if k in {p[0] for p in plan.parts}
    ]
    assert all(np.array_equal(p[1], q[1]) for p, q in zip(plan.parts, again.parts, strict=True))
    assert any(
        not np.array_equal(p[1], q[1]) for p, q in zip(plan.parts, other.parts, strict=False)
    )
    everything = SamplePlan.draw(spec, size=5000, seed=0, server_round=1)
    assert everything.size == 1000


def test_output_layer_plan_is_the_last_matrix_and_what_follows() -> None:
    # Prepare: conv kernel (3-D), hidden Linear, output Linear (5×4) and its bias, an int buffer
    record = ArrayRecord(
        {
            "conv.weight": Array(np.zeros((4, 1, 3), np.float32)),
            "hidden.weight": Array(np.zeros((4, 12), np.float32)),
            "out.weight": Array(np.zeros((5, 4), np.float32)),
            "out.bias": Array(np.zeros(5, np.float32)),
            "steps": Array(np.zeros(1, np.int64)),
        }
    )
    spec = ModelSpec.from_arrayrecord(record)
    # Execute
    plan = SamplePlan.output_layer(spec, size=4096, seed=0, server_round=1)
    sampled = SamplePlan.output_layer(spec, size=10, seed=0, server_round=1)
    # Assert: every coordinate of out.weight and out.bias; at most `size` when the layer is larger
    assert plan is not None and plan.size == 25
    assert [(k, len(idx)) for k, idx, _ in plan.parts] == [("out.weight", 20), ("out.bias", 5)]
    assert sampled is not None and sampled.size == 10
    assert {k for k, _, _ in sampled.parts} <= {"out.weight", "out.bias"}
    flat = ModelSpec.from_arrayrecord(ArrayRecord({"w": Array(np.zeros(8, np.float32))}))
    assert SamplePlan.output_layer(flat, size=16, seed=0, server_round=1) is None


def test_median_cosine_hand_computed() -> None:
    # Prepare: unit columns e1, e1, e1, e2, -e1 and a zero column; coordinate medians (0.5, 0)
    sample = np.array([[2.0, 1.0, 4.0, 0.0, -3.0, 0.0], [0.0, 0.0, 0.0, 5.0, 0.0, 0.0]], np.float32)
    # Execute
    cosine = median_cosine(sample)
    # Assert: the reference points along e1
    np.testing.assert_allclose(cosine, [1.0, 1.0, 1.0, 0.0, -1.0, 0.0], atol=1e-6)
    assert sample[0, 0] == 2.0  # input untouched


def test_output_layer_cosine_sees_a_flip_confined_to_the_output_layer() -> None:
    # Prepare: 8 devices agree on both layers; device 7 reverses only its output layer, which is
    # 10 of 1010 coordinates, invisible in the whole-update direction
    rng = np.random.default_rng(0)
    spec = ModelSpec.from_arrayrecord(
        ArrayRecord(
            {
                "body.weight": Array(np.zeros((100, 10), np.float32)),
                "out.weight": Array(np.zeros((2, 5), np.float32)),
            }
        )
    )
    common_body = rng.standard_normal(1000).astype(np.float32)
    common_out = rng.standard_normal(10).astype(np.float32)
    updates = []
    for i in range(8):
        body = common_body + 0.5 * rng.standard_normal(1000).astype(np.float32)
        out = common_out + 0.5 * rng.standard_normal(10).astype(np.float32)
        updates.append({"body.weight": body, "out.weight": -out if i == 7 else out})
    # Execute
    cosine = output_layer_cosine(updates, spec, size=4096, seed=0, server_round=1)
    # Assert
    assert cosine is not None
    assert cosine[7] < -0.5 < 0.5 < cosine[:7].min()


def test_agreement_z_is_the_lower_direction_and_ignores_nan() -> None:
    whole = np.array([-1.0, 0.5, np.nan, np.nan])
    output = np.array([-3.0, 1.0, -2.0, np.nan])
    result = agreement_z(whole, output)
    assert result[:3].tolist() == [-3.0, 0.5, -2.0] and np.isnan(result[3])


def test_gather_sample_returns_update_columns() -> None:
    # Prepare: global [1, 2, 3]; updates x - g are [1, 0, 0] and [0, 0, -3]
    spec = ModelSpec.from_arrayrecord(ArrayRecord({"w": Array(np.array([1, 2, 3], np.float32))}))
    plan = SamplePlan.draw(spec, size=16, seed=0, server_round=1)
    updates = [{"w": np.array([2, 2, 3], np.float32)}, {"w": np.array([1, 2, 0], np.float32)}]
    # Execute
    sample = gather_sample(updates, spec, plan)
    # Assert
    assert sample.shape == (3, 2)
    assert sample.T.tolist() == [[1, 0, 0], [0, 0, -3]]


def test_update_statistics_hand_computed_cosines() -> None:
    # Prepare: 5 devices, 2 coordinates; three point along (1, 0), one along (0, 1), one against
    sample = np.array([[1.0, 2.0, 3.0, 0.0, -1.0], [0.0, 0.0, 0.0, 1.0, 0.0]], np.float32)
    # Execute: normalised columns are e1, e1, e1, e2, -e1; coordinate median is (1, 0)
    stats = update_statistics(sample, norms=np.ones(5))
    # Assert
    np.testing.assert_allclose(stats.cosine, [1.0, 1.0, 1.0, 0.0, -1.0], atol=1e-6)


def test_dispersion_is_not_fooled_by_coordinates_nearly_every_device_leaves_alone() -> None:
    # Prepare: the failure seen on MIT-BIH. 300 dense coordinates (a shared direction plus
    # noise); 100 "unit" coordinates that only two devices among 0-15 really use, ten others
    # touch at 1e-6 and the rest leave at exactly 0 (dead ReLUs for their data). The coordinate
    # MAD there is ~1e-6, so a plain z-score gives the users z ~ 1e6 and makes devices 16-23,
    # which use none of them, look "implausibly central" (0.00× the median dispersion).
    rng = np.random.default_rng(0)
    n, dense, units = 24, 300, 100
    sample = np.zeros((dense + units, n), np.float32)
    sample[:dense] = rng.standard_normal((dense, 1)) + rng.standard_normal((dense, n))
    for j in range(dense, dense + units):
        sample[j, rng.permutation(n)[:10]] = 1e-6 * rng.standard_normal(10)
        sample[j, rng.choice(16, size=2, replace=False)] = rng.standard_normal(2)
    norms = np.linalg.norm(sample, axis=0)
    # Execute
    stats = update_statistics(sample, norms)
    scores = anomaly_scores(stats, np.full(n, 100.0), AnomalyThresholds())
    # Assert: every device's dispersion is ordinary, and nobody is rejected
    ratio = stats.dispersion / np.median(stats.dispersion)
    assert ratio.min() > 0.7, ratio.round(2)
    assert not scores.rejected.any(), scores.reasons


def test_nearest_relative_distance_finds_copies_and_near_copies() -> None:
    # Prepare: 40 random updates of different norms; 7 and 23 copy 3; 31 is 11 plus 1 % noise
    rng = np.random.default_rng(1)
    sample = rng.standard_normal((512, 40)).astype(np.float32) * rng.uniform(0.1, 10, 40)
    sample[:, 7] = sample[:, 23] = sample[:, 3]
    sample[:, 31] = sample[:, 11] + 0.01 * np.linalg.norm(sample[:, 11]) * rng.standard_normal(
        512
    ).astype(np.float32) / np.sqrt(512)
    norms = np.linalg.norm(sample, axis=0)
    unit = sample / norms
    # Execute
    nearest = nearest_relative_distance(unit, norms, seed=5)
    # Assert: copies at 0, the near copy at ~1 %, independent updates far apart (>= 0.5)
    assert nearest[[3, 7, 23]].tolist() == [0.0, 0.0, 0.0]
    assert nearest[11] == pytest.approx(0.01, rel=0.2) and nearest[31] == nearest[11]
    others = np.delete(nearest, [3, 7, 11, 23, 31])
    assert others.min() > 0.5


def test_nearest_relative_distance_is_scale_free_and_order_free() -> None:
    # Prepare: small honest updates are not "close" to each other just because they are small
    rng = np.random.default_rng(2)
    sample = rng.standard_normal((256, 30)).astype(np.float32)
    sample[:, :10] *= 1e-3
    norms = np.linalg.norm(sample, axis=0)
    permutation = rng.permutation(30)
    # Execute
    nearest = nearest_relative_distance(sample / norms, norms)
    shuffled = nearest_relative_distance(
        sample[:, permutation] / norms[permutation], norms[permutation]
    )
    # Assert
    assert nearest[:10].min() > 0.9
    np.testing.assert_array_equal(shuffled, nearest[permutation])


def test_zero_updates_have_no_nearest_distance() -> None:
    sample = np.zeros((16, 3), np.float32)
    sample[0, 1] = 1.0
    nearest = nearest_relative_distance(sample, np.linalg.norm(sample, axis=0))
    assert np.isnan(nearest[0]) and np.isnan(nearest[2]) and nearest[1] == 1.0


def test_colluders_sending_one_vector_are_rejected_as_copies() -> None:
    # Prepare: 20 honest updates around a common direction and 4 identical crafted ones that sit
    # inside the honest spread (ALIE/IPM-like: ordinary norm, direction and dispersion)
    rng = np.random.default_rng(3)
    common = rng.standard_normal((1024, 1))
    sample = (common + 2.0 * rng.standard_normal((1024, 24))).astype(np.float32)
    sample[:, 20:] = (common[:, 0] + 0.5 * rng.standard_normal(1024)).astype(np.float32)[:, None]
    norms = np.linalg.norm(sample, axis=0)
    # Execute
    stats = update_statistics(sample, norms, seed=(0, 1))
    scores = anomaly_scores(stats, np.full(24, 100.0), AnomalyThresholds())
    # Assert
    assert scores.rejected.tolist() == [False] * 20 + [True] * 4
    assert all("copy" in str(r) for r in scores.reasons[20:])
    assert scores.signals["duplicate_ratio"][:20].min() > 0.5


def test_duplicate_signal_needs_min_replies_dispersion_and_survives_a_copy_majority() -> None:
    # Fewer replies than min_replies_dispersion: not estimated (the test of equality with FedAvg
    # relies on this for tiny honest fleets that share one direction)
    small = UpdateStatistics(np.ones(5), np.ones(5), np.ones(5), np.array([0.0, 0.0, 1, 1, 1]))
    assert np.isnan(
        anomaly_scores(small, np.ones(5), AnomalyThresholds()).signals["duplicate_ratio"]
    ).all()
    # Most updates are copies (median distance 0): copies score, the cap keeps half the round
    nearest = np.array([0.0] * 7 + [0.9, 1.0, 1.1, 0.8])
    stats = UpdateStatistics(np.ones(11), np.full(11, 0.5), np.ones(11), nearest)
    scores = anomaly_scores(stats, np.ones(11), AnomalyThresholds())
    assert scores.rejected.sum() == 5 and not scores.rejected[7:].any()


def _stats(norms: list[float], cosine: list[float], dispersion: list[float]) -> UpdateStatistics:
    return UpdateStatistics(np.array(norms), np.array(cosine), np.array(dispersion))


def test_obvious_outliers_are_rejected_with_the_signal_that_caught_them() -> None:
    # Prepare: 12 honest devices, then one boosted (norm 50×), one reversed, one too central,
    # one claiming 1000× the data
    honest = 12
    norms = [1.0 + 0.05 * i for i in range(honest)] + [50.0, 1.0, 1.0, 1.0]
    cosine = [0.6 + 0.01 * i for i in range(honest)] + [0.65, -0.6, 0.65, 0.65]
    dispersion = [1.0 + 0.02 * i for i in range(honest)] + [1.0, 1.0, 0.05, 1.0]
    counts = np.array([100.0] * honest + [100.0, 100.0, 100.0, 100_000.0])
    # Execute
    scores = anomaly_scores(_stats(norms, cosine, dispersion), counts, AnomalyThresholds())
    # Assert
    assert scores.rejected.tolist() == [False] * honest + [True] * 4
    reasons = scores.reasons[honest:]
    assert "norm" in str(reasons[0])
    assert "direction" in str(reasons[1])
    assert "centre" in str(reasons[2])
    assert "sample count" in str(reasons[3])
    assert all(r is None for r in scores.reasons[:honest])
    assert (scores.score[:honest] < 1).all() and (scores.score[honest:] >= 1).all()


def test_norm_rule_hand_computed_at_the_floor() -> None:
    # Prepare: identical honest norms -> scale at its floor 0.4 (log units), threshold 4:
    # the boundary is exp(1.6) = 4.95 times the typical norm
    norms = [1.0] * 10 + [4.8, 5.2]
    stats = _stats(norms, [0.5] * 12, [1.0] * 12)
    # Execute
    scores = anomaly_scores(stats, np.full(12, 10.0), AnomalyThresholds())
    # Assert
    assert scores.signals["norm_z"][10] == pytest.approx(np.log(4.8) / 0.4)
    assert scores.rejected.tolist() == [False] * 11 + [True]


def test_norm_ratio_rule_holds_when_equal_large_norms_capture_the_densest_half() -> None:
    # Prepare: 40 % Gaussian attackers send updates of one norm (100); honest norms spread over
    # two orders of magnitude, so the densest half of the log-norms is the attackers' and the
    # z-score sees nothing. The median is still an honest norm.
    honest = [0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 4.0, 6.0]
    norms = honest + [100.0] * 8
    stats = _stats(norms, [0.5] * 20, [1.0] * 20)
    # Execute
    scores = anomaly_scores(stats, np.full(20, 10.0), AnomalyThresholds())
    # Assert: the attackers, and only they, go, on the ratio rule
    assert scores.rejected.tolist() == [False] * 12 + [True] * 8
    assert np.nanmax(scores.signals["norm_z"][12:]) < 4
    assert all("median" in str(r) for r in scores.reasons[12:])


def test_most_updates_zero_leaves_no_median_norm_to_compare_with() -> None:
    # Prepare: 7 of 10 devices send the global model back unchanged (nothing to learn): the
    # median norm is 0, so the ratio rule has no reference: NaN, which never rejects
    norms = [0.0] * 7 + [1.0, 1.2, 1.1]
    stats = _stats(norms, [0.5] * 10, [1.0] * 10)
    # Execute
    scores = anomaly_scores(stats, np.full(10, 10.0), AnomalyThresholds())
    # Assert
    assert np.isnan(scores.signals["norm_ratio"]).all()
    assert all(r is None or "median" not in r for r in scores.reasons)


def test_rejections_are_capped_at_max_reject_fraction() -> None:
    # Prepare: 10 devices, 4 of them wildly off, but at most 30 % (3) may be rejected
    norms = [1.0] * 6 + [10.0, 20.0, 30.0, 40.0]
    stats = _stats(norms, [0.5] * 10, [1.0] * 10)
    thresholds = AnomalyThresholds(max_reject_fraction=0.3)
    # Execute
    scores = anomaly_scores(stats, np.full(10, 10.0), thresholds)
    # Assert: the 3 highest scores go; the norm-10 device stays although its score is >= 1
    assert scores.rejected.tolist() == [False] * 7 + [True] * 3
    assert scores.score[6] >= 1.0


def test_rounds_smaller_than_min_replies_are_not_scored() -> None:
    scores = anomaly_scores(
        _stats([1.0, 100.0], [1.0, -1.0], [1.0, 1.0]), np.ones(2), AnomalyThresholds()
    )
    assert not scores.rejected.any()
    assert np.isnan(scores.signals["norm_z"]).all()


def test_backward_pull_hand_computed() -> None:
    # Median norm 2: a reversed update of twice the median at cosine -0.5 pulls back by 1
    # median norm; one along the reference pulls forward (negative)
    pull = backward_pull(np.array([-0.5, 0.8, 0.0, -1.0]), np.array([4.0, 2.0, 2.0, 1.0]))
    np.testing.assert_allclose(pull, [1.0, -0.8, 0.0, 0.5])
    # No typical update to measure by: NaN, and the z-score alone decides
    assert np.isnan(backward_pull(np.array([-1.0, 0.5, 0.5]), np.zeros(3))).all()


def test_small_round_keeps_honest_small_updates_of_their_own_direction() -> None:
    # Prepare: round 2 of smart_home (6 home hubs, seed 0, no attack): the two days with little
    # left to learn send small updates (0.23 and 0.09 of the median norm) of their own
    # direction; the shortest half is the 4 similar days, so they sit at robust z -9.7 and -6.6
    cosine = [-0.33, 0.01, 0.69, 0.70, 0.74, 0.75]
    norms = [0.23, 0.09, 0.95, 1.05, 1.0, 1.1]
    stats = _stats(norms, cosine, [1.0] * 6)
    # Execute
    scores = anomaly_scores(stats, np.full(6, 1140.0), AnomalyThresholds())
    z_alone = anomaly_scores(
        stats, np.full(6, 1140.0), AnomalyThresholds(small_round_backward_pull=None)
    )
    # Assert: nobody rejected, though the direction signal (which the weighting's quality and
    # the device's history use) still sees both; judged by the z-score alone both would go
    assert not scores.rejected.any()
    assert (scores.signals["direction_z"][:2] < -4).all()
    assert scores.score[:2].max() < 0.75  # below history_anomaly's ramp: no reliability charge
    assert z_alone.rejected.tolist() == [True, True, False, False, False, False]


def test_small_round_still_rejects_sign_flippers_at_40_percent() -> None:
    # Prepare: 5 replies, 2 of them (40 %, on one side) reversed typical updates, and one
    # IPM-like small reversed update (0.1 of the median norm) in a round of 6
    flipped = _stats([1.0, 1.1, 0.9, 0.8, 1.0], [0.70, 0.72, 0.75, -0.70, -0.65], [1.0] * 5)
    small = _stats([1.0, 1.1, 0.9, 1.0, 1.2, 0.1], [0.70, 0.72, 0.75, 0.71, 0.69, -0.9], [1.0] * 6)
    # Execute
    flip_scores = anomaly_scores(flipped, np.full(5, 100.0), AnomalyThresholds())
    small_scores = anomaly_scores(small, np.full(6, 100.0), AnomalyThresholds())
    # Assert: the flippers pull back by 0.56 and 0.65 median norms and go, with the pull named;
    # the small reversed update undoes 0.09 of a typical update and stays in
    assert flip_scores.rejected.tolist() == [False, False, False, True, True]
    assert "pulls the model back by 0.56 median norms" in str(flip_scores.reasons[3])
    assert "pulls the model back by 0.65 median norms" in str(flip_scores.reasons[4])
    assert not small_scores.rejected.any()
    assert small_scores.signals["direction_z"][5] < -4


def test_small_round_rejects_copies_for_their_direction_however_small() -> None:
    # Prepare: 6 replies, 2 of them one IPM vector (-0.1·mean: a pull of 0.09 median norms each,
    # nearest distance 0); honest devices are never copies
    norms = [1.0, 1.1, 0.9, 1.0, 0.1, 0.1]
    cosine = [0.70, 0.72, 0.75, 0.71, -0.9, -0.9]
    nearest = np.array([0.8, 0.9, 0.8, 1.0, 0.0, 0.0])
    stats = UpdateStatistics(np.array(norms), np.array(cosine), np.ones(6), nearest)
    # Execute
    scores = anomaly_scores(stats, np.full(6, 100.0), AnomalyThresholds())
    # Assert: both go on direction (the copy signal itself needs min_replies_dispersion replies)
    assert scores.rejected.tolist() == [False] * 4 + [True] * 2
    assert all("direction" in str(r) and "pulls" not in str(r) for r in scores.reasons[4:])
    assert np.isnan(scores.signals["duplicate_ratio"]).all()


def test_large_round_judges_direction_by_the_z_score_alone() -> None:
    # Prepare: 25 replies (at least min_replies_dispersion): 15 honest, 10 (40 %, one side)
    # reversed updates, half of them small (0.2 of the median norm: a pull of about 0.14)
    honest_cos = [0.55 + 0.02 * i for i in range(15)]
    norms = [1.0 + 0.02 * i for i in range(15)] + [1.0] * 5 + [0.2] * 5
    cosine = honest_cos + [-0.7] * 10
    stats = _stats(norms, cosine, [1.0] * 25)
    # Execute
    scores = anomaly_scores(stats, np.full(25, 100.0), AnomalyThresholds())
    # Assert: all 10 go on direction, the small ones too; no pull in the reasons
    assert scores.rejected.tolist() == [False] * 15 + [True] * 10
    assert all("direction" in str(r) and "pulls" not in str(r) for r in scores.reasons[15:])


def test_backward_pull_keeps_an_orthogonal_honest_cluster_and_refuses_reversed_updates() -> None:
    # Prepare: round 1 of industrial_maintenance (C-MAPSS, seed 0, no attack) in miniature: 25
    # replies, 15 aligned (cosine ~0.74), 8 engine units orthogonal to them (cosine 0-0.15,
    # pull < 0.15) and 2 reversed typical updates (a pull of ~0.7)
    cosine = [0.70 + 0.005 * i for i in range(15)] + [0.02 * i for i in range(8)] + [-0.7, -0.65]
    norms = [1.0 + 0.01 * i for i in range(15)] + [0.9 + 0.05 * i for i in range(8)] + [1.0, 1.1]
    stats = _stats(norms, cosine, [1.0] * 25)
    counts = np.full(25, 13.0)
    # Execute
    z_alone = anomaly_scores(stats, counts, AnomalyThresholds())
    with_pull = anomaly_scores(stats, counts, AnomalyThresholds(backward_pull=0.3))
    # Assert: by the z-score alone the 8 honest units go; with the pull only the reversed two,
    # the pull named in their reasons, while the units' low direction z still shows
    assert z_alone.rejected.sum() == 10
    assert with_pull.rejected.tolist() == [False] * 23 + [True] * 2
    assert all("pulls the model back by" in str(r) for r in with_pull.reasons[23:])
    assert (with_pull.signals["direction_z"][15:23] < -4).all()


def test_norm_reference_floor_takes_the_median_of_the_updates_still_learning() -> None:
    # Prepare: a late round of industrial_maintenance in miniature: 13 of 25 devices fitted by
    # the model send near-zero updates (1e-5 to 0.05), the 11 still learning send 1-18 (the
    # plain median is 0.05, so all of them sit 20x or more above it), and one sends 4000
    near_zero = np.geomspace(1e-5, 0.05, 13).tolist()
    norms = near_zero + [1.0 + 1.7 * i for i in range(11)] + [4000.0]
    stats = _stats(norms, [0.3] * 25, [1.0] * 25)
    counts = np.full(25, 13.0)
    # Execute
    plain = anomaly_scores(stats, counts, AnomalyThresholds())
    floored = anomaly_scores(stats, counts, AnomalyThresholds(norm_reference_floor=0.1))
    # Assert: the plain median refuses the learners as too large; the floored one only the
    # outsized update, and says which median it compared with
    assert plain.rejected[13:].sum() >= 11
    assert floored.rejected.tolist() == [False] * 24 + [True]
    assert "the round median learning update" in str(floored.reasons[24])


def test_history_anomaly_ramp() -> None:
    np.testing.assert_allclose(
        history_anomaly(np.array([0.0, 0.75, 0.875, 1.0, 3.0])), [0.0, 0.0, 0.5, 1.0, 1.0]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"norm_threshold": 0}, "norm_threshold must be > 0", id="norm-threshold"),
        pytest.param({"direction_threshold": -1}, "direction_threshold", id="direction"),
        pytest.param({"dispersion_ratio": 1.0}, r"dispersion_ratio must be in \(0, 1\)", id="disp"),
        pytest.param({"duplicate_ratio": 0.0}, r"duplicate_ratio must be in \(0, 1\)", id="dup"),
        pytest.param({"max_count_ratio": 1.0}, "max_count_ratio must be > 1", id="count"),
        pytest.param({"max_norm_ratio": 0.5}, "max_norm_ratio must be > 1", id="norm-ratio"),
        pytest.param({"min_replies": 2}, "min_replies must be >= 3", id="min-replies"),
        pytest.param({"max_reject_fraction": 1.0}, "max_reject_fraction", id="fraction"),
        pytest.param({"cosine_scale_floor": -0.1}, "cosine_scale_floor", id="floor"),
        pytest.param(
            {"small_round_backward_pull": 0.0},
            "small_round_backward_pull must be > 0 or None",
            id="small-round-backward-pull",
        ),
        pytest.param(
            {"backward_pull": -0.3}, "backward_pull must be > 0 or None", id="backward-pull"
        ),
        pytest.param(
            {"norm_reference_floor": 1.0},
            r"norm_reference_floor must be in \(0, 1\) or None",
            id="norm-reference-floor",
        ),
    ],
)
def test_thresholds_reject_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AnomalyThresholds(**kwargs)
