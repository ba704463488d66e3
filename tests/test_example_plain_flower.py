"""End to end: the plain-Flower example runs in Flower's Simulation Engine with one bad node.

4 nodes, 2 rounds. The node of partition 0 sends a boosted sign flip in round 1 (an anomaly) and
NaNs in round 2 (a malformed reply); both are rejected, the run completes, and the model learns.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.simulation import run_simulation

from examples.plain_flower.app import ExampleResult, make_apps

pytestmark = pytest.mark.e2e

NODES, ROUNDS = 4, 2


def simulate(server, client) -> None:
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=NODES,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "log_to_driver": False},
        },
    )


@pytest.fixture(scope="module")
def outcome() -> ExampleResult:
    results: list[ExampleResult] = []
    server, client = make_apps(
        num_nodes=NODES, num_rounds=ROUNDS, malicious_partition=0, on_finish=results.append
    )
    simulate(server, client)
    assert len(results) == 1, "the ServerApp did not finish"
    return results[0]


def test_the_run_completes_with_a_finite_model(outcome: ExampleResult) -> None:
    arrays = outcome.result.arrays
    assert set(arrays) == {"w", "b"}
    assert all(np.isfinite(arrays[k].numpy()).all() for k in arrays)
    assert sorted(outcome.result.train_metrics_clientapp) == [1, 2]
    assert sorted(outcome.result.evaluate_metrics_clientapp) == [1, 2]


def test_the_bad_node_is_rejected_every_round_with_its_reason(outcome: ExampleResult) -> None:
    round_1, round_2 = outcome.reports[1], outcome.reports[2]
    assert list(round_1.rejected) == ["0"]
    assert "norm" in round_1.rejected["0"] or "direction" in round_1.rejected["0"]
    assert round_1.devices["0"].status == "anomalous"
    assert list(round_2.rejected) == ["0"]
    assert "NaN" in round_2.rejected["0"]
    assert round_2.devices["0"].status == "malformed"
    for report in (round_1, round_2):
        assert report.num_replies == NODES and report.num_accepted == NODES - 1
        json.dumps(report.to_dict(), allow_nan=False)


def test_the_bad_node_loses_reliability_and_honest_nodes_share_the_weight(
    outcome: ExampleResult,
) -> None:
    devices = outcome.reports[2].devices
    honest = [devices[str(p)] for p in range(1, NODES)]
    assert devices["0"].reliability < min(d.reliability for d in honest)
    assert sum(d.weight for d in honest) == pytest.approx(1.0)


def test_the_global_model_learns_despite_the_attacker(outcome: ExampleResult) -> None:
    accuracy = outcome.central_accuracy
    assert accuracy[0] < 0.5  # zeros: one class for everything
    assert accuracy[ROUNDS] >= 0.85


def test_the_example_with_compressed_updates_learns_and_refuses_what_does_not_decode() -> None:
    """Top-k updates through the mod and the DecodedUpdates wrapper, one node malicious."""
    from clients.compression import Compression, TopK

    results: list[ExampleResult] = []
    server, client = make_apps(
        num_nodes=NODES,
        num_rounds=3,
        malicious_partition=0,
        on_finish=results.append,
        compression=Compression("topk", TopK(0.25), error_feedback=True),
    )
    simulate(server, client)
    (outcome,) = results
    round_1, round_2 = outcome.reports[1], outcome.reports[2]
    assert list(round_1.rejected) == ["0"]  # the boosted sign flip, decoded, then refused
    # A NaN update is not compressed (the mod cannot): it arrives as it is and is refused.
    assert list(round_2.rejected) == ["0"] and "NaN" in round_2.rejected["0"]
    assert round_2.num_accepted == NODES - 1
    assert outcome.central_accuracy[3] >= 0.85
