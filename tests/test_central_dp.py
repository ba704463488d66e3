"""Central DP: bounded influence of one device, per-round epsilon, refused strategies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from clients.privacy import central_dp_epsilon
from fl_iot.client_app import build_client_app
from fl_iot.errors import ConfigError
from fl_iot.run_config import compose_config
from fl_iot.server import run_server
from strategies import ReliabilityWeightedFedAvg
from strategies.central_dp import CentralDP
from tests.in_process_grid import InProcessGrid, set_task_identity
from tests.test_strategies_support import configure, numpy_arrays
from tests.test_strategies_support import reply as strategy_reply


def reply_to(node: int, update: np.ndarray, num_examples: int) -> Message:
    sent = Message(
        content=RecordDict({"c": ConfigRecord()}), message_type="train", dst_node_id=node
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(update.astype(np.float32))}),
            "metrics": MetricRecord({"num-examples": num_examples}),
        }
    )
    return Message(content=content, reply_to=sent)


def aggregate(updates: list[np.ndarray], counts: list[int], seed: int = 0) -> np.ndarray:
    set_task_identity()
    dp = CentralDP(
        FedAvg(),
        noise_multiplier=1e-9,
        clipping_norm=1.0,
        num_sampled_devices=4,
        num_devices=10,
        seed=seed,
    )
    dp.dp.current_arrays = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    replies = [reply_to(i + 1, u, c) for i, (u, c) in enumerate(zip(updates, counts, strict=True))]
    arrays, _ = dp.aggregate_train(1, replies)
    assert arrays is not None
    return arrays["w"].numpy()


def test_one_device_moves_the_aggregate_by_at_most_its_clipped_share():
    honest = [np.array([0.1, 0.0, 0.0]), np.array([0.0, 0.1, 0.0]), np.array([0.0, 0.0, 0.1])]
    # The same fleet, once with a modest fourth device and once with a huge one that also
    # claims a huge sample count: weights are equalised and the update clipped to norm 1.
    base = aggregate([*honest, np.array([0.1, 0.1, 0.1])], [10, 10, 10, 10])
    attacked = aggregate([*honest, np.array([1e6, -1e6, 0.0])], [10, 10, 10, 10**6])

    assert np.linalg.norm(attacked - base) <= (1.0 + np.linalg.norm([0.1, 0.1, 0.1])) / 4 + 1e-6


def test_equal_weights_make_the_aggregate_an_unweighted_mean_of_clipped_updates():
    updates = [np.array([3.0, 4.0, 0.0]), np.array([0.5, 0.0, 0.0])]  # the first is clipped to 1

    result = aggregate(updates, [1, 1000])

    np.testing.assert_allclose(result, (np.array([0.6, 0.8, 0.0]) + updates[1]) / 2, atol=1e-6)


def test_reliability_weighting_under_central_dp_caps_every_share_and_scales_the_noise():
    # Prepare: kappa 1.5 over 4 replies caps each share at 0.375. The fourth device claims 10^6
    # examples (bounded to 3x the median: raw shares 1/6, 1/6, 1/6, 1/2, so it is capped and the
    # rest shared 0.625 / 3 each) and sends a huge update (clipped to norm 1 by the DP wrapper).
    set_task_identity()
    strategy = ReliabilityWeightedFedAvg(min_available_nodes=4)
    dp = CentralDP(
        strategy,
        noise_multiplier=1e-9,
        clipping_norm=1.0,
        num_sampled_devices=4,
        num_devices=10,
        max_weight_ratio=1.5,
    )
    zero = {"w": np.zeros(3, dtype=np.float32)}
    configure(dp, 1, zero, [1, 2, 3, 4])
    updates = [np.array([0.1, 0.0, 0.0]), np.array([0.0, 0.1, 0.0]), np.array([0.0, 0.0, 0.1])]
    huge = np.array([1e6, -1e6, 0.0])
    replies = [
        strategy_reply(node, {"w": u.astype(np.float32)}, count)
        for node, u, count in zip((1, 2, 3, 4), [*updates, huge], (10, 10, 10, 10**6), strict=True)
    ]
    # Execute
    arrays, _ = dp.aggregate_train(1, replies)
    report = dp.round_report(1)
    # Assert
    assert arrays is not None
    shares = [report.devices[d].weight for d in ("1", "2", "3", "4")]
    assert shares == pytest.approx([0.625 / 3] * 3 + [0.375])
    clipped = huge / np.linalg.norm(huge)
    expected = sum(s * u for s, u in zip(shares, [*updates, clipped], strict=True))
    np.testing.assert_allclose(numpy_arrays(arrays)["w"], expected, atol=1e-6)
    assert dp.dp.noise_multiplier == pytest.approx(1.5 * 1e-9)  # noise grows with kappa
    assert report.sections["central_dp"]["max_weight_ratio"] == 1.5


@pytest.mark.parametrize("strategy", [FedMedian(), object()])
def test_strategies_whose_output_is_not_a_bounded_weighted_mean_are_refused(strategy):
    with pytest.raises(ValueError, match="central DP cannot wrap"):
        CentralDP(strategy, 1.0, 1.0, num_sampled_devices=4, num_devices=10)  # type: ignore[arg-type]


def test_fl_iot_reports_a_refused_wrap_as_a_config_error():
    from fl_iot.server import build_strategy

    GlobalHydra.instance().clear()
    cfg = compose_config(("privacy=central_dp", "strategy=fedmedian"))
    with pytest.raises(ConfigError, match=r"^central DP cannot wrap FedMedian"):
        build_strategy(cfg)


@pytest.mark.parametrize(
    ("strategy", "kappa"), [("fedavg", 1.0), ("reliability", 2.0)], ids=["fedavg", "reliability"]
)
def test_a_run_reports_central_epsilon_every_round_as_an_independent_accountant_does(
    tmp_path, strategy, kappa
):
    GlobalHydra.instance().clear()
    cfg = compose_config(
        (
            f"strategy={strategy}",
            f"privacy.central.max_weight_ratio={kappa}",
            "privacy=central_dp",
            "privacy.central.noise_multiplier=1.2",
            "scenario.num_devices=6",
            "scenario.num_rounds=3",
            "scenario.fraction_train=0.5",
            "tracking.sinks=[jsonl,summary]",
        )
    )
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(resolved, DictConfig)
    grid = InProcessGrid(build_client_app(lambda _: resolved), 6)

    summary = run_server(grid, resolved, tmp_path).summary.to_dict()

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epsilons = [r["privacy"]["central-epsilon"] for r in records]
    for rounds, epsilon in enumerate(epsilons, start=1):
        expected = central_dp_epsilon([(1.2, 3 / 6, rounds)], 1e-5)  # 3 of 6 replied each round
        assert epsilon == pytest.approx(expected, rel=1e-9)
    assert epsilons == sorted(epsilons)
    assert summary["privacy"]["central-epsilon"] == epsilons[-1]
    assert all(
        r["privacy"]["central-epsilon-if-poisson"] < r["privacy"]["central-epsilon"]
        for r in records
    )


def test_the_poisson_figure_uses_the_rate_the_round_sampled_with_not_the_replies():
    # Prepare: every device of the fleet is sampled, one of them fails
    set_task_identity()
    dp = CentralDP(FedAvg(), 1.0, 1.0, num_sampled_devices=4, num_devices=4)
    configure(dp, 1, {"w": np.zeros(3, dtype=np.float32)}, [1, 2, 3, 4])
    replies = [strategy_reply(n, {"w": np.full(3, 0.1, np.float32)}, 10) for n in (1, 2, 3)]
    # Execute
    dp.aggregate_train(1, [*replies, strategy_reply(4, error="crashed")])
    report = dp.round_report(1)["central_dp"]
    # Assert: a round that sampled the whole fleet gets no amplification, however many replied
    assert report["released"] and report["replies"] == 3
    assert report["epsilon_if_poisson_sampling"] == pytest.approx(report["epsilon"], rel=1e-12)
    assert dp.released == [(0.75, 4)]


def test_the_round_loop_reads_privacy_spent_from_flowers_dp_wrapper_and_ours():
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    from fl_iot.round_loop import central_privacy_spent

    # Prepare: Flower's wrapper with its own accountant after 3 releases, ours after none
    config = PrivacyConfig(
        1e-5, 10, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION
    )
    accountant = RdpAccountant(config)
    flower = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(), 1.0, 1.0, 5, accountant=accountant
    )
    accountant.compose(GaussianPrivacyEvent(1.0, 5, 10), count=3)
    ours = CentralDP(FedAvg(), 1.0, 1.0, num_sampled_devices=5, num_devices=10)
    # Execute / Assert: Flower's figure as its accountant says; ours with the Poisson figure
    assert central_privacy_spent(flower) == {
        "central-epsilon": pytest.approx(accountant.get_epsilon(1e-5)),
        "central-delta": 1e-5,
    }
    assert central_privacy_spent(ours) == {
        "central-epsilon": 0.0,
        "central-delta": 1e-5,
        "central-epsilon-if-poisson": 0.0,
    }
    assert central_privacy_spent(FedAvg()) == {}
    without_accountant = DifferentialPrivacyServerSideFixedClipping(FedAvg(), 1.0, 1.0, 5)
    assert central_privacy_spent(without_accountant) == {}
