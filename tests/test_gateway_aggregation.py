"""Aggregating gateways (``gateways.mode=aggregate``): hierarchical FedAvg, judged per gateway.

The gateway's average (``clients.gateway``), its wire format, the server's view of gateways as
participants (``fl_iot.gateway_aggregation``) and whole in-process runs; the relay mode is in
``test_gateways.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.gateway import (
    AGGREGATE,
    AGGREGATE_METRICS,
    EDGE,
    Aggregation,
    aggregated,
    average_updates,
    gateway_mod,
    pack_contents,
    unpack,
)
from fl_iot.errors import ConfigError
from fl_iot.gateways import gateway_mode
from tests.e2e import resolved_config
from tests.test_gateways import TINY, gateway_message, run


def device_reply(value: float, count: float, steps: int = 3) -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord(
                {
                    "w": Array(np.full(3, value, dtype=np.float32)),
                    "steps": Array(np.array(steps, dtype=np.int64)),
                }
            ),
            "metrics": MetricRecord({"num-examples": count, "train-loss": value}),
        }
    )


def sent_model() -> ArrayRecord:
    """The model the gateway's devices train from: the layout of :func:`device_reply`'s."""
    return ArrayRecord(
        {"w": Array(np.zeros(3, dtype=np.float32)), "steps": Array(np.array(0, dtype=np.int64))}
    )


# --- the average ----------------------------------------------------------------------------


def test_the_average_is_weighted_by_examples_and_keeps_every_dtype():
    averaged, total = average_updates(
        [device_reply(1.0, 10, steps=1), device_reply(4.0, 30, steps=4)]
    )

    assert total == 40.0
    np.testing.assert_allclose(averaged["w"].numpy(), np.full(3, 3.25, dtype=np.float32))
    assert averaged["w"].numpy().dtype == np.float32
    # Integer buffers: the weighted mean (3.25) rounded, in the buffer's own dtype and shape
    assert averaged["steps"].numpy().dtype == np.int64 and averaged["steps"].numpy().shape == ()
    assert int(averaged["steps"].numpy()) == 3


@pytest.mark.parametrize("count", [0, -5, float("nan"), float("inf")])
def test_a_reply_without_a_usable_weight_is_left_out(count):
    averaged, total = average_updates([device_reply(1.0, 10), device_reply(9.0, count)])

    assert total == 10.0
    np.testing.assert_allclose(averaged["w"].numpy(), 1.0)
    assert average_updates([device_reply(9.0, count)]) is None


# --- the gateway ----------------------------------------------------------------------------


def averaging_app(served, edge_filter=None) -> ClientApp:
    """Device d trains to all-d weights on 10·(d + 1) examples; device 2 always raises."""
    aggregation = Aggregation(edge_filter=edge_filter)
    app = ClientApp(
        mods=[gateway_mod(lambda context: served, aggregation_of=lambda c: aggregation)]
    )

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        device = int(context.node_config["device-id"])
        if device == 2:
            raise RuntimeError("device 2 has a flat battery")
        return Message(device_reply(float(device), 10.0 * (device + 1)), reply_to=msg)

    return app


def test_a_gateway_ships_one_average_and_each_device_its_metrics_or_failure():
    model = sent_model()
    content = pack_contents({d: RecordDict({"arrays": model}) for d in (0, 1, 2, 3)})

    reply = averaging_app((0, 1, 2, 3))(
        gateway_message(content), Context(1, 5, {}, RecordDict(), {})
    )

    arrays, metrics = aggregated(reply.content)
    # Devices 0, 1 and 3 on 10, 20 and 40 examples: (0·10 + 1·20 + 3·40) / 70
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)
    assert metrics["num-examples"] == 70.0 and metrics["devices"] == 3
    answers = unpack(reply.content)
    assert isinstance(answers[2], Error) and "flat battery" in answers[2].reason
    for device in (0, 1, 3):
        assert "arrays" not in answers[device]  # no device's own update leaves the gateway
        assert answers[device]["metrics"]["num-examples"] == 10.0 * (device + 1)


def test_devices_refused_at_the_edge_stay_out_of_the_average_and_say_why():
    model = sent_model()
    content = pack_contents({d: RecordDict({"arrays": model}) for d in (0, 1, 3)})
    seen = []

    def refuse_three(sent, models, weights):
        seen.append((sent, [float(m["w"].numpy()[0]) for m in models], list(weights)))
        return [None, None, "too far"]

    reply = averaging_app((0, 1, 3), refuse_three)(
        gateway_message(content), Context(1, 5, {}, RecordDict(), {})
    )

    assert seen[0][1:] == ([0.0, 1.0, 3.0], [10.0, 20.0, 40.0])
    np.testing.assert_array_equal(seen[0][0]["w"].numpy(), model["w"].numpy())
    arrays, metrics = aggregated(reply.content)
    np.testing.assert_allclose(arrays["w"].numpy(), 20.0 / 30.0)
    assert metrics["devices"] == 1 + 1
    assert unpack(reply.content)[3][EDGE]["reason"] == "too far"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (np.full(4, 1.0, dtype=np.float32), "array 'w' is float32[4], not float32[3]"),
        (np.full(3, np.nan, dtype=np.float32), "array 'w' has non-finite values"),
        (np.full(3, 1, dtype=np.int32), "array 'w' is int32[3], not float32[3]"),
    ],
    ids=["shape", "nan", "dtype"],
)
def test_a_malformed_model_is_refused_alone_and_the_rest_averaged(bad, reason):
    model = sent_model()
    content = pack_contents({d: RecordDict({"arrays": model}) for d in (0, 1, 3)})
    app = ClientApp(
        mods=[gateway_mod(lambda context: (0, 1, 3), aggregation_of=lambda c: Aggregation())]
    )

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        device = int(context.node_config["device-id"])
        reply = device_reply(float(device), 10.0)
        if device == 3:
            reply["arrays"]["w"] = Array(bad)
        return Message(reply, reply_to=msg)

    reply = app(gateway_message(content), Context(1, 5, {}, RecordDict(), {}))

    arrays, metrics = aggregated(reply.content)
    np.testing.assert_allclose(arrays["w"].numpy(), 0.5)  # devices 0 and 1 only
    assert metrics["devices"] == 2
    assert unpack(reply.content)[3][EDGE]["reason"] == f"malformed update: {reason}"


def test_an_evaluate_message_and_a_relaying_gateway_are_answered_per_device():
    content = pack_contents({0: RecordDict(), 1: RecordDict()})
    app = averaging_app((0, 1))
    evaluate = gateway_message(content)
    evaluate.metadata.__dict__["_message_type"] = "evaluate"

    @app.evaluate()
    def evaluate_handler(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1.0})}), reply_to=msg)

    reply = app(evaluate, Context(1, 5, {}, RecordDict(), {}))
    assert aggregated(reply.content) is None and sorted(unpack(reply.content)) == [0, 1]
    assert AGGREGATE not in reply.content and AGGREGATE_METRICS not in reply.content


# --- the config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("gateways.mode=tree",), "unknown gateways.mode 'tree'; valid choices: relay, aggregate"),
        (("gateways.mode=aggregate",), "gateways.mode=aggregate needs gateways"),
        (
            ("gateways.devices_per_gateway=2", "gateways.mode=aggregate", "rounds=deadline"),
            "runs rounds=sync only, got rounds.mode='deadline'",
        ),
        (
            ("gateways.devices_per_gateway=2", "gateways.mode=aggregate", "fleet=realistic"),
            "runs fleet=ideal only, got fleet='realistic'",
        ),
        (
            ("gateways.devices_per_gateway=2", "gateways.mode=aggregate", "compression=topk"),
            "runs compression=none only",
        ),
        (
            ("gateways.devices_per_gateway=2", "gateways.edge_rejection=true"),
            "gateways.edge_rejection=true needs gateways.mode=aggregate",
        ),
        (
            ("gateways.devices_per_gateway=2", "gateways.device_fraction=0.5"),
            "gateways.device_fraction needs gateways.mode=aggregate",
        ),
        (
            (
                "gateways.devices_per_gateway=2",
                "gateways.mode=aggregate",
                "gateways.device_fraction=0",
            ),
            "gateways.device_fraction must be in (0, 1], got 0",
        ),
    ],
)
def test_what_aggregate_mode_cannot_run_is_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gateway_mode(resolved_config(*TINY, *overrides))


# --- whole runs -----------------------------------------------------------------------------

ASSIGNMENT = "gateways.assignment=[[0,1,2],[5,3],[4]]"


def test_hierarchical_fedavg_over_every_device_is_fedavg_over_the_devices(tmp_path: Path):
    # FedAvg of the gateways' example-weighted averages, weighted by their totals, is FedAvg of
    # the devices: equal up to float32 rounding (the gateway averages once more)
    base = (*TINY, "scenario.fraction_train=1.0", "strategy=fedavg", ASSIGNMENT)
    relay = run(resolved_config(*base), tmp_path / "relay")
    gated = run(resolved_config(*base, "gateways.mode=aggregate"), tmp_path / "aggregate")

    for key in relay.arrays:
        np.testing.assert_allclose(
            gated.arrays[key].numpy(), relay.arrays[key].numpy(), rtol=0, atol=1e-6
        )
    assert gated.summary.status == "completed"
    first = json.loads((tmp_path / "aggregate" / "metrics.jsonl").read_text().splitlines()[0])
    # Every device is still recorded as itself, with its own metrics; its bytes up are its
    # share of its gateway's one average: a gateway's devices send one model between them
    assert sorted(first["devices"], key=int) == [str(d) for d in range(6)]
    assert all(e["num-examples"] > 0 for e in first["devices"].values())
    assert first["replied"] == 6
    relayed = json.loads((tmp_path / "relay" / "metrics.jsonl").read_text().splitlines()[0])
    model = relayed["devices"]["0"]["payload_bytes_up"]
    for devices in ([0, 1, 2], [5, 3], [4]):
        shares = [first["devices"][str(d)]["payload_bytes_up"] for d in devices]
        assert len(set(shares)) == 1
        assert abs(sum(shares) - model) < 200, (shares, model)  # the average and its weight
    assert first["communication"]["payload_bytes_up"] == pytest.approx(3 * model, abs=600)


def test_trusted_aggregation_judges_gateways_and_the_edge_judges_devices(tmp_path: Path):
    # 12 devices behind 3 gateways of 4; 3 attackers scale their updates 10x
    cfg = resolved_config(
        "scenario.num_devices=12",
        "scenario.num_rounds=2",
        "scenario.fraction_train=1.0",
        "scenario.fraction_evaluate=0.5",
        "tracking.sinks=[jsonl,summary]",
        "strategy=trusted",
        "attack=scaling",
        "attack.fraction=0.25",
        "gateways.devices_per_gateway=4",
        "gateways.mode=aggregate",
        "gateways.edge_rejection=true",
    )

    result = run(cfg, tmp_path)

    assert result.summary.status == "completed"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        # The strategy's participants, its report and its detection are the gateways
        assert sorted(record["strategy"]["devices"]) == ["gateway-0", "gateway-1", "gateway-2"]
        assert record["detection"]["attackers"] <= 3
        # The devices' records stay per device
        assert sorted(record["devices"], key=int) == [str(d) for d in range(12)]
    refused = {d for r in records for d, e in r["devices"].items() if e.get("edge_rejected")}
    attackers = {d for d, e in records[0]["devices"].items() if e["attacker"]}
    assert refused and refused <= attackers  # the edge refuses attackers, no honest device
    assert sum(r["detection"].get("edge_caught", 0) for r in records) == sum(
        r["detection"].get("edge_rejected", 0) for r in records
    )


def test_the_server_selects_a_seeded_share_of_each_sampled_gateways_devices(tmp_path: Path):
    from flwr.serverapp.strategy import FedAvg

    from fl_iot.gateway_aggregation import GatewayAggregation

    wrapper = GatewayAggregation(FedAvg(), {0: range(10), 1: range(10, 14)}, 0.3, seed=7)

    first = wrapper.selected(1, "train", 0)
    assert len(first) == 3 and set(first) <= set(range(10)) and list(first) == sorted(first)
    assert wrapper.selected(1, "train", 0) == first  # seeded by run, round, phase and gateway
    assert len({wrapper.selected(r, "train", 0) for r in range(1, 9)}) > 1
    assert len(wrapper.selected(1, "train", 1)) == 1  # at least one device of a small gateway

    # A whole run: 3 gateways of 4, half of each sampled gateway's devices train
    cfg = resolved_config(
        *TINY,
        "scenario.num_devices=12",
        "scenario.fraction_train=1.0",
        "strategy=fedavg",
        "gateways.devices_per_gateway=4",
        "gateways.mode=aggregate",
        "gateways.device_fraction=0.5",
    )
    assert run(cfg, tmp_path).summary.status == "completed"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["sampled"] for r in records] == [6, 6, 6]
    assert [r["replied"] for r in records] == [6, 6, 6]


def test_a_gateway_none_of_whose_devices_trained_answers_the_strategy_with_an_error():
    from flwr.app import ConfigRecord
    from flwr.serverapp.strategy import FedAvg

    from fl_iot.gateway_aggregation import GATEWAY_NODE_BASE, GatewayAggregation
    from fl_iot.gateway_grid import device_node_id
    from tests.in_process_grid import set_task_identity
    from tests.test_strategies_support import FakeGrid

    set_task_identity()
    inner = FedAvg(fraction_train=1.0, min_train_nodes=2, min_available_nodes=2)
    wrapper = GatewayAggregation(inner, {0: (0, 1), 1: (2,)})
    sent = sorted(
        wrapper.configure_train(1, sent_model(), ConfigRecord(), FakeGrid([])),
        key=lambda m: m.metadata.dst_node_id,
    )  # Flower's FedAvg draws its sample (here: both gateways) in a random order
    assert [m.metadata.dst_node_id for m in sent] == [device_node_id(d) for d in (0, 1, 2)]
    for i, message in enumerate(sent):
        message.metadata.__dict__["_message_id"] = f"device-message-{i}"
    average = device_reply(5.0, 20.0)
    replies = [
        Message(Error(code=0, reason="flat battery"), reply_to=sent[0]),
        Message(Error(code=0, reason="flat battery"), reply_to=sent[1]),
        Message(
            RecordDict(
                {
                    "metrics": MetricRecord({"num-examples": 20.0}),
                    AGGREGATE: average["arrays"],
                    AGGREGATE_METRICS: MetricRecord({"num-examples": 20.0, "devices": 1}),
                }
            ),
            reply_to=sent[2],
        ),
    ]

    folded = sorted(wrapper._folded("train", replies), key=lambda r: r.metadata.src_node_id)

    assert [r.metadata.src_node_id for r in folded] == [GATEWAY_NODE_BASE, GATEWAY_NODE_BASE + 1]
    assert folded[0].has_error() and "no device of gateway 0" in folded[0].error.reason
    assert not folded[1].has_error()
    arrays, _ = wrapper.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), 5.0)  # gateway 1's average alone


# --- the gateway's time budget --------------------------------------------------------------


@pytest.mark.parametrize("aggregate", [False, True], ids=["relay", "aggregate"])
def test_devices_not_started_within_the_gateways_budget_are_answered_late(aggregate):
    from clients.gateway import LATE_AT_GATEWAY_ERROR_CODE

    ticks = iter(range(100))  # every look at the clock is one second later
    app = ClientApp(
        mods=[
            gateway_mod(
                lambda context: (0, 1, 3, 4),
                aggregation_of=lambda c: Aggregation() if aggregate else None,
                budget_of=lambda c: 2.5,
                clock=lambda: float(next(ticks)),
            )
        ]
    )

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return Message(device_reply(float(context.node_config["device-id"]), 10.0), reply_to=msg)

    content = pack_contents({d: RecordDict({"arrays": sent_model()}) for d in (0, 1, 3, 4)})
    reply = app(gateway_message(content), Context(1, 5, {}, RecordDict(), {}))

    answers = unpack(reply.content)
    # Looked at 1 and 2 s after the message came: trained; at 3 and 4 s: over the 2.5 s budget
    assert all(isinstance(answers[d], RecordDict) for d in (0, 1))
    for device in (3, 4):
        assert isinstance(answers[device], Error)
        assert answers[device].code == LATE_AT_GATEWAY_ERROR_CODE
        assert "not started: the gateway had spent" in answers[device].reason
    if aggregate:
        arrays, metrics = aggregated(reply.content)
        np.testing.assert_allclose(arrays["w"].numpy(), 0.5)
        assert metrics["devices"] == 2


@pytest.mark.parametrize("budget", ["0", "-1.5"])
def test_a_bad_gateway_budget_is_refused_by_name(budget):
    with pytest.raises(
        ConfigError,
        match=rf"gateways.message_budget_s must be > 0 and finite, or null, got {budget}",
    ):
        gateway_mode(
            resolved_config(
                *TINY, "gateways.devices_per_gateway=2", f"gateways.message_budget_s={budget}"
            )
        )
