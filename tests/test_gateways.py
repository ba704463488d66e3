"""Gateways: one node serves many devices, and the server still addresses and judges each.

In process (no Ray): the round loop over :class:`fl_iot.gateway_grid.GatewayGrid` and nodes that
are gateways. A run behind gateways must be the same run as without them, record for record, in
every mode that keeps per-device state (DP ledgers, codec residuals, partial updates) or roles
(attackers). The Simulation Engine run is in ``test_gateways_e2e.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import OmegaConf

from clients.gateway import (
    ERRORS,
    INDEX,
    GatewayFormatError,
    gateway_mod,
    pack_contents,
    pack_replies,
    unpack,
)
from fl_iot.client_app import build_client_app
from fl_iot.device_runtime import run_context
from fl_iot.errors import ConfigError
from fl_iot.gateway_grid import GatewayGrid, device_node_id
from fl_iot.gateways import gateway_assignment, num_nodes
from fl_iot.protocol import GATEWAY_ERROR_CODE
from fl_iot.server import run_server
from tests.e2e import resolved_config
from tests.in_process_grid import InProcessGrid, set_task_identity

# --- the assignment -------------------------------------------------------------------------


def assignment(num_devices: int, **gateways: object):
    return gateway_assignment(
        OmegaConf.create({"scenario": {"num_devices": num_devices}, "gateways": gateways})
    )


def test_devices_per_gateway_fills_gateways_in_device_order_the_last_with_the_rest():
    assert assignment(10, devices_per_gateway=4) == ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9))
    assert assignment(10, devices_per_gateway=1) is None
    assert assignment(10, assignment=[[9, 0], [1, 2, 3, 4, 5, 6, 7, 8]]) == (
        (9, 0),
        (1, 2, 3, 4, 5, 6, 7, 8),
    )
    cfg = OmegaConf.create(
        {"scenario": {"num_devices": 10}, "gateways": {"devices_per_gateway": 3}}
    )
    assert num_nodes(cfg) == 4


@pytest.mark.parametrize(
    ("gateways", "message"),
    [
        ({"devices_per_gateway": 0}, "devices_per_gateway must be an integer >= 1, got 0"),
        ({"devices_per_gateway": 2.5}, "got 2.5"),
        ({"assignment": [[0, 1], [2]]}, "exactly once"),
        ({"assignment": [[0, 1, 2], [3, 3]]}, "one of them twice"),
        ({"assignment": [[0, 1, 2, 3], []]}, "each gateway at least one"),
        ({"assignment": [[0, 1], [2, "x"]]}, "assignment[1] must be a list of device ids"),
        ({"assignment": [[0, 1, 2, 3]], "devices_per_gateway": 2}, "not both"),
    ],
)
def test_a_bad_assignment_is_refused_with_the_bad_value(gateways, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        assignment(4, **gateways)


def test_the_cli_config_refuses_a_bad_assignment():
    with pytest.raises(ConfigError, match="devices_per_gateway"):
        resolved_config("gateways.devices_per_gateway=-1")


# --- the wire format ------------------------------------------------------------------------


def model() -> ArrayRecord:
    return ArrayRecord({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)})


def test_records_shared_by_devices_travel_once_and_unpack_to_each():
    shared = model()
    contents = {
        3: RecordDict({"arrays": shared, "config": ConfigRecord({"server-round": 1})}),
        7: RecordDict({"arrays": shared, "config": ConfigRecord({"cutoff": 2})}),
    }
    packed = pack_contents(contents)
    arrays = [k for k, v in packed.items() if isinstance(v, ArrayRecord)]
    assert len(arrays) == 1
    unpacked = unpack(packed)
    assert list(unpacked) == [3, 7]
    assert unpacked[3]["arrays"] is shared and unpacked[7]["arrays"] is shared
    assert unpacked[7]["config"]["cutoff"] == 2


def test_a_reply_carries_each_device_content_or_its_own_error():
    reply = pack_replies(
        {
            1: RecordDict({"metrics": MetricRecord({"num-examples": 5})}),
            2: Error(code=4201, reason="budget spent"),
        }
    )
    unpacked = unpack(reply)
    assert unpacked[1]["metrics"]["num-examples"] == 5
    assert isinstance(unpacked[2], Error)
    assert (unpacked[2].code, unpacked[2].reason) == (4201, "budget spent")


def hostile(mutate) -> RecordDict:
    packed = pack_contents({0: RecordDict({"arrays": model()}), 1: RecordDict({"arrays": model()})})
    mutate(packed)
    return packed


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.pop(INDEX),
        lambda p: p.__setitem__(INDEX, MetricRecord({"devices": [0]})),
        lambda p: p[INDEX].__setitem__("devices", [0, 0]),
        lambda p: p[INDEX].__setitem__("devices", ["0"]),
        lambda p: p[INDEX].__setitem__("0", ["arrays", "r9"]),
        lambda p: p[INDEX].__setitem__("0", ["arrays", INDEX]),
        lambda p: p[INDEX].__setitem__("0", ["arrays"]),
        lambda p: p[INDEX].__setitem__("0", ["arrays", "r0", "arrays", "r1"]),
        lambda p: p[INDEX].pop("1"),
        lambda p: p.__setitem__(ERRORS, ConfigRecord({"0.code": "x"})),
        lambda p: p.__setitem__(ERRORS, MetricRecord({"0.code": 1})),
    ],
    ids=[
        "no-index",
        "index-not-config",
        "device-twice",
        "device-not-int",
        "missing-record",
        "reserved-record",
        "odd-pairs",
        "name-twice",
        "device-without-entry",
        "error-code-not-int",
        "errors-not-config",
    ],
)
def test_a_malformed_gateway_message_is_refused(mutate):
    with pytest.raises(GatewayFormatError):
        unpack(hostile(mutate))


# --- the client mod -------------------------------------------------------------------------


def counting_app(served: tuple[int, ...] | None) -> ClientApp:
    """Each device counts its training rounds in its own state; device 2 always raises."""
    app = ClientApp(mods=[gateway_mod(lambda context: served)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        device = int(context.node_config["device-id"])
        if device == 2:
            raise RuntimeError("device 2 has a flat battery")
        count = int(context.state.get("count", MetricRecord({"n": 0}))["n"]) + 1
        context.state["count"] = MetricRecord({"n": count})
        return Message(
            RecordDict({"metrics": MetricRecord({"n": count, "d": device})}), reply_to=msg
        )

    return app


def gateway_message(content: RecordDict) -> Message:
    set_task_identity()
    message = Message(content, dst_node_id=5, message_type="train")
    message.metadata.__dict__["_message_id"] = "m"
    return message


def test_each_device_behind_a_gateway_keeps_its_own_state_and_its_own_failure():
    app = counting_app((1, 2, 3))
    context = Context(1, 5, {"partition-id": 0}, RecordDict(), {})
    for _ in range(2):
        reply = app(gateway_message(pack_contents({1: RecordDict(), 2: RecordDict()})), context)
    reply = app(gateway_message(pack_contents({1: RecordDict(), 3: RecordDict()})), context)
    answers = unpack(reply.content)
    assert answers[1]["metrics"]["n"] == 3
    assert answers[3]["metrics"]["n"] == 1
    assert sorted(context.state.keys()) == ["1/count", "3/count"]
    reply = app(gateway_message(pack_contents({2: RecordDict()})), context)
    failed = unpack(reply.content)[2]
    assert isinstance(failed, Error) and "flat battery" in failed.reason


def test_a_message_without_an_index_goes_to_every_device_and_a_device_node_is_untouched():
    answers = unpack(
        counting_app((0, 1))(
            gateway_message(RecordDict()), Context(1, 5, {}, RecordDict(), {})
        ).content
    )
    assert list(answers) == [0, 1]
    direct = counting_app(None)(
        gateway_message(RecordDict()), Context(1, 5, {"device-id": 4}, RecordDict(), {})
    )
    assert direct.content["metrics"]["d"] == 4


def test_a_message_for_a_device_the_gateway_does_not_serve_is_refused():
    with pytest.raises(GatewayFormatError, match=r"devices \[9\] are not served"):
        counting_app((0, 1))(
            gateway_message(pack_contents({9: RecordDict()})), Context(1, 5, {}, RecordDict(), {})
        )


# --- the grid -------------------------------------------------------------------------------


class RecordingGrid(InProcessGrid):
    """Counts the messages that reach the nodes, and can make one gateway reply garbage."""

    def __init__(self, *args, garbage_from: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.garbage_from, self.pushed = garbage_from, 0

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for message in messages:
            self.pushed += 1
            (reply,) = super().send_and_receive([message], timeout=timeout)
            if self.contexts[message.metadata.dst_node_id].node_config["partition-id"] == (
                self.garbage_from
            ):
                reply = Message(
                    RecordDict({INDEX: ConfigRecord({"devices": "x"})}), reply_to=message
                )
            replies.append(reply)
        return replies


def test_the_grid_sends_one_message_per_gateway_and_answers_per_device():
    grid = RecordingGrid(counting_app_for_gateways(((0, 1), (2, 3), (4,))), 3, garbage_from=2)
    gateways = {
        node: served for node, served in zip(grid.node_ids, ((0, 1), (2, 3), (4,)), strict=True)
    }
    gateway_grid = GatewayGrid(grid, gateways)
    assert list(gateway_grid.get_node_ids()) == [device_node_id(d) for d in range(5)]
    messages = [
        Message(RecordDict(), dst_node_id=device_node_id(d), message_type="train")
        for d in (0, 1, 2, 4)
    ]
    replies = list(gateway_grid.send_and_receive(messages, timeout=5))
    assert grid.pushed == 3
    by_device = {r.metadata.src_node_id - device_node_id(0): r for r in replies}
    assert sorted(by_device) == [0, 1, 2, 4]
    assert {r.metadata.reply_to_message_id for r in replies} == {
        m.metadata.message_id for m in messages
    }
    assert by_device[0].content["metrics"]["d"] == 0
    assert by_device[2].has_error()  # the device raised: its own error
    assert by_device[4].error.code == GATEWAY_ERROR_CODE  # its gateway's reply was garbage


def test_a_gateway_that_never_answers_fails_nobody_silently_and_is_forgotten():
    """Its devices' messages get no reply (they count as missing) and nothing stays in flight."""
    assignment = ((0, 1), (2, 3))
    grid = InProcessGrid(
        counting_app_for_gateways(assignment),
        2,
        fault=lambda partition, message: "silent" if partition == 1 else None,
    )
    gateway_grid = GatewayGrid(grid, dict(zip(grid.node_ids, assignment, strict=True)))
    messages = [
        Message(RecordDict(), dst_node_id=device_node_id(d), message_type="train") for d in range(4)
    ]
    replies = list(gateway_grid.send_and_receive(messages, timeout=0.3))
    assert sorted(r.metadata.src_node_id - device_node_id(0) for r in replies) == [0, 1]
    assert gateway_grid._in_flight == {} and gateway_grid._ready == {}


def counting_app_for_gateways(assignment: tuple[tuple[int, ...], ...]) -> ClientApp:
    """Gateway ``partition-id`` serves ``assignment[partition-id]`` with :func:`counting_app`."""
    device_app = counting_app(None)
    app = ClientApp(
        mods=[gateway_mod(lambda context: assignment[int(context.node_config["partition-id"])])]
    )

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return device_app(msg, context)

    return app


# --- whole runs -----------------------------------------------------------------------------

TINY = (
    "scenario.num_devices=6",
    "scenario.num_rounds=3",
    "scenario.fraction_train=0.5",
    "scenario.fraction_evaluate=0.5",
    "tracking.sinks=[jsonl,summary,checkpoint]",
)
# Differs with the node ids in a message's header (Flower's are random) and with wall time.
NOT_COMPARED = {
    "round_time_s",
    "elapsed_s",
    "wall-time-s",
    "compute-time-s",
    "max_compute_time_s",
    "message_bytes_up",
    "message_bytes_down",
    "eval_message_bytes_up",
    "eval_message_bytes_down",
}


def run(cfg, out: Path):
    app = build_client_app(lambda _: cfg, state_dir=out / "devices")
    grid = InProcessGrid(app, num_nodes(cfg))
    return run_server(grid, cfg, out)


def records(out: Path) -> list[dict]:
    return [strip(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in NOT_COMPARED}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


RUNS = {
    "trusted-alie": ("strategy=trusted", "attack=alie", "attack.fraction=0.34"),
    "deadline-realistic-stale": (
        "fleet=realistic",
        "rounds=deadline",
        "rounds.late_updates=stale",
        "strategy=reliability",
    ),
    "fedbuff-realistic": (
        "fleet=realistic",
        "rounds=fedbuff",
        "rounds.buffer_size=2",
        "strategy=trusted",
        "scenario.num_rounds=4",
    ),
    "local-dp": ("privacy=local_dp",),
    "topk-error-feedback": ("compression=topk", "strategy=trusted"),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_run_behind_gateways_is_the_run_without_them(tmp_path, name):
    direct = run(resolved_config(*TINY, *RUNS[name]), tmp_path / "direct")
    gated = run(
        resolved_config(*TINY, *RUNS[name], "gateways.assignment=[[0,1,2],[5,3],[4]]"),
        tmp_path / "gated",
    )
    for key in direct.arrays:
        np.testing.assert_array_equal(direct.arrays[key].numpy(), gated.arrays[key].numpy())
    assert records(tmp_path / "gated") == records(tmp_path / "direct")
    assert direct.summary.status == gated.summary.status == "completed"


def test_a_device_that_fails_inside_its_gateway_fails_alone(tmp_path):
    """Device 1's trainer raises (an invalid learning rate on its class only): its gateway's
    other devices still train and count; device 1 counts as failed under its own id."""
    setting = ("scenario.fraction_train=1.0", "gateways.devices_per_gateway=3")
    classes = run_context(resolved_config(*TINY, *setting)).federation
    failing = next(d.device_id for d in classes.devices if d.device_class == "smartphone")
    cfg = resolved_config(*TINY, *setting, "+device_classes.smartphone.trainer_options.bad=1")
    run(cfg, tmp_path)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    errors = {d for d, e in first["devices"].items() if "error" in e}
    assert str(failing) in errors
    assert first["replied"] == 6 - len(errors) > 0
    assert all(run_context_class(cfg, int(d)) == "smartphone" for d in errors)


def run_context_class(cfg, device: int) -> str:
    from fl_iot.device_runtime import run_context

    return run_context(cfg).federation[device].device_class
