"""The round loop against a hand-driven fake grid: who a reply is charged to, and what it can do.

Every reply is charged to the node its message was sent to, and that node's device comes from the
roll call; a reply can neither speak for another device, nor set the federated scores with a huge
claimed count, nor crash the server with odd values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fl_iot import protocol as P
from fl_iot.federation import build_federation
from fl_iot.metrics import scores
from fl_iot.roster import Roster
from fl_iot.round_loop import (
    EVAL_WEIGHT_CAP,
    RoundLoop,
    RoundRecord,
    RoundSink,
    error_summary,
    pool_evaluations,
)
from tests.in_process_grid import OfflineGrid, set_task_identity

Answerer = Callable[[Message, int], list[Message]]
"""Replies to one message, given the message and the round; [] for silence."""


class FakeGrid(OfflineGrid):
    """Lists ``online`` and answers each message with ``answer``, in reverse order, like Ray."""

    def __init__(self, online: list[int], answer: Answerer) -> None:
        set_task_identity()
        self.online = online
        self.answer = answer
        self.round = 0
        self.gone_from: dict[int, int] = {}  # node -> first round Flower no longer lists it
        self.sent: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.online if self.round < self.gone_from.get(n, self.round + 1)]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies: list[Message] = []
        for message in messages:
            self.push(message)
            self.sent.append(message)
            replies.extend(self.answer(message, self.round))
        return list(reversed(replies))


class EveryNode(Strategy):
    """Trains and evaluates every node the grid lists; keeps the model."""

    def __init__(self, grid: FakeGrid) -> None:
        self.grid = grid
        self.arrays = ArrayRecord()
        self.train_replies: list[list[Message]] = []

    def _messages(self, arrays: ArrayRecord, message_type: str, grid: Grid) -> list[Message]:
        return [
            Message(RecordDict({"arrays": arrays}), dst_node_id=node, message_type=message_type)
            for node in grid.get_node_ids()
        ]

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self.grid.round = server_round
        self.arrays = arrays
        return self._messages(arrays, "train", grid)

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        self.train_replies.append(list(replies))
        return self.arrays, None

    def configure_evaluate(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        return self._messages(arrays, "evaluate", grid)

    def aggregate_evaluate(self, server_round, replies):  # type: ignore[no-untyped-def]
        return None

    def summary(self) -> None:
        return None


class Records(RoundSink):
    def __init__(self) -> None:
        self.rounds: list[RoundRecord] = []

    def log_round(self, record: RoundRecord) -> None:
        self.rounds.append(record)


def device_record(device_id: object) -> ConfigRecord:
    return ConfigRecord({P.DEVICE_ID: device_id})  # type: ignore[dict-item]


def train_reply(message: Message, device_id: object, n: object = 10, loss: object = 0.5) -> Message:
    metrics = MetricRecord({P.NUM_EXAMPLES: n, P.TRAIN_LOSS: loss})  # type: ignore[dict-item]
    content = RecordDict({P.METRICS: metrics, P.DEVICE: device_record(device_id)})
    return Message(content, reply_to=message)


def eval_reply(
    message: Message, device_id: object, confusion: list[list[int]], loss: float = 0.5
) -> Message:
    cells = [c for row in confusion for c in row]
    metrics = MetricRecord(
        {P.NUM_EXAMPLES: sum(cells), P.EVAL_LOSS: loss, P.CONFUSION: cells}  # type: ignore[dict-item]
    )
    return Message(
        RecordDict({P.METRICS: metrics, P.DEVICE: device_record(device_id)}), reply_to=message
    )


HALF_RIGHT = [[25, 25], [25, 25]]


def honest(roster: Roster) -> Answerer:
    """Each node answers as its own device: 10 train examples, a half-right 100-example test."""

    def answer(message: Message, server_round: int) -> list[Message]:
        device = roster.device_of(message.metadata.dst_node_id)
        if message.metadata.message_type == "train":
            return [train_reply(message, device)]
        return [eval_reply(message, device, HALF_RIGHT)]

    return answer


def run_loop(
    roster: Roster, grid: FakeGrid, num_rounds: int = 1, **kwargs: object
) -> tuple[list[RoundRecord], EveryNode]:
    federation = build_federation(
        [str(i) for i in range(len(roster.node_to_device))], {"wearable": 1.0}, 0.0, seed=0
    )
    records = Records()
    strategy = EveryNode(grid)
    loop = RoundLoop(
        grid=grid,
        strategy=strategy,
        roster=roster,
        federation=federation,
        num_rounds=num_rounds,
        seed=0,
        num_classes=2,
        round_timeout_s=1.0,
        sinks=[records],
        **kwargs,  # type: ignore[arg-type]
    )
    loop.run(ArrayRecord())
    return records.rounds, strategy


ROSTER = Roster({1: 0, 7: 2, 9: 1, 12: 3})
"""Node 1 is device 0: the SuperLink's own node id, as an honest device that must not be blamed."""


def test_a_node_claiming_another_device_is_ignored_as_a_spoof(caplog):
    # Node 12 (device 3) claims to be device 0, with an all-wrong matrix and a tiny loss.
    def answer(message: Message, server_round: int) -> list[Message]:
        if message.metadata.dst_node_id != 12:
            return honest(ROSTER)(message, server_round)
        if message.metadata.message_type == "train":
            return [train_reply(message, 0, n=1000, loss=0.0)]
        return [eval_reply(message, 0, [[0, 50], [50, 0]], loss=0.001)]

    with caplog.at_level(logging.WARNING, logger="fl_iot.round_loop"):
        [record], _ = run_loop(ROSTER, FakeGrid([1, 7, 9, 12], answer))

    assert record.federated["accuracy"] == pytest.approx(0.5)  # the three honest devices only
    assert record.federated["num_examples"] == 300
    assert record.devices["0"]["eval_loss"] == 0.5  # device 0's own, not the spoofer's
    assert record.devices["3"]["eval_ignored"] == "spoof: claims to be device 0"
    assert record.devices["3"]["ignored"] == "spoof: claims to be device 0"
    assert P.NUM_EXAMPLES not in record.devices["3"]
    assert record.train == {"loss": 0.5, "num_examples": 30.0}
    spoofs = [r for r in caplog.records if "spoof" in r.getMessage()]
    assert len(spoofs) == 2 and all(r.levelno == logging.WARNING for r in spoofs)


def test_a_synthetic_error_reply_is_charged_to_the_node_it_answers():
    # Node 7 (device 2) is dead: the SuperLink answers for it, from its own node id 1.
    def answer(message: Message, server_round: int) -> list[Message]:
        if message.metadata.dst_node_id == 7:
            return [create_message_error_unavailable_res_message(message.metadata, "node_unavail")]
        return honest(ROSTER)(message, server_round)

    [record], strategy = run_loop(ROSTER, FakeGrid([1, 7, 9, 12], answer))

    assert record.devices["2"]["error"].startswith("Error: Node Unavailable")
    assert "error" not in record.devices["0"]
    assert (record.sampled, record.replied, record.failed, record.missing) == (4, 3, 1, 0)
    # The strategy receives the replies in device order of the nodes they answer.
    replied = [r.metadata.src_node_id for r in strategy.train_replies[0]]
    assert replied == [1, 9, 1, 12]  # devices 0, 1, 2 (the SuperLink's reply), 3


def test_a_node_that_leaves_the_grid_is_still_sampled_and_counted():
    # From round 2 on, node 9 (device 1) is gone: Flower no longer lists it, nothing comes back.
    def answer(message: Message, server_round: int) -> list[Message]:
        if message.metadata.dst_node_id == 9 and server_round >= 2:
            return []
        return honest(ROSTER)(message, server_round)

    grid = FakeGrid([1, 7, 9, 12], answer)
    grid.gone_from = {9: 2}
    records, _ = run_loop(ROSTER, grid, num_rounds=3)

    assert [(r.sampled, r.replied, r.missing) for r in records] == [(4, 4, 0), (4, 3, 1), (4, 3, 1)]
    assert records[2].devices["1"]["missing"] is True
    assert records[2].federated["num_examples"] == 300


def test_one_device_cannot_set_the_federated_accuracy():
    # Four honest devices are right half the time on 100 examples each; node 12 claims a million
    # examples, all classified right.
    liar = 10**6
    roster = Roster({**ROSTER.node_to_device, 20: 4})

    def answer(message: Message, server_round: int) -> list[Message]:
        if message.metadata.dst_node_id == 12 and message.metadata.message_type == "evaluate":
            return [eval_reply(message, 3, [[liar // 2, 0], [0, liar // 2]])]
        return honest(roster)(message, server_round)

    [record], _ = run_loop(roster, FakeGrid([1, 7, 9, 12, 20], answer))

    # The median count is 100: the liar counts for at most 3 × 100 of 4 × 100 + 300 examples.
    bounded_share = EVAL_WEIGHT_CAP * 100 / (4 * 100 + EVAL_WEIGHT_CAP * 100)
    assert record.federated["accuracy"] == pytest.approx(0.5 + 0.5 * bounded_share)
    assert record.federated["accuracy"] < 0.72
    assert record.federated["num_examples"] == pytest.approx(700)


def test_pooling_scales_only_the_devices_above_the_cap():
    pooled, weights = pool_evaluations(
        [
            np.array([[4, 0], [0, 0]]),
            np.array([[0, 0], [0, 6]]),
            np.array([[0, 60], [0, 0]]),
            np.zeros((2, 2), dtype=np.int64),
        ],
        [4, 6, 60, 0],
        cap=2.0,
    )
    # Median of the positive counts 4, 6, 60 is 6: the 60-example device counts for 12.
    assert weights.tolist() == [1.0, 1.0, 0.2, 1.0]
    assert pooled.tolist() == [[4.0, 12.0], [0.0, 6.0]]
    assert scores(pooled)["accuracy"] == pytest.approx(10 / 22)


def test_scores_of_a_weighted_float_matrix():
    # A scaled matrix is a weighted count: scores are its ratios, as with integer counts.
    weighted = scores(np.array([[1.5, 0.5], [0.0, 2.0]]))
    assert weighted == pytest.approx(scores(np.array([[3, 1], [0, 4]])))
    assert weighted["accuracy"] == pytest.approx(3.5 / 4.0)


RAY_TRACEBACK = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()"
    "\x1b[39m (pid=7376, ip=192.0.2.2)\n"
    '  File "/work/main/clients/trainer.py", line 138, in sgd\n'
    "    return torch.optim.SGD(\n"
    '  File "/torch/optim/sgd.py", line 46, in __init__\n'
    '    raise ValueError(f"Invalid learning rate: {lr}")\n'
    "ValueError: Invalid learning rate: -0.1\n\n"
    "The above exception was the direct cause of the following exception:\n\n"
    "\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=7376, ip=192.0.2.2)\n"
    '  File "/flwr/simulation/ray_transport/ray_actor.py", line 65, in run\n'
    "    raise ClientAppException(str(ex)) from ex\n"
    "flwr.clientapp.client_app.ClientAppException: \n"
    "Exception ClientAppException occurred. Message: Invalid learning rate: -0.1'>"
)


def test_a_failed_device_keeps_its_error_short_and_the_traceback_is_logged_once(caplog):
    def answer(message: Message, server_round: int) -> list[Message]:
        if message.metadata.dst_node_id in (7, 9) and message.metadata.message_type == "train":
            return [Message(Error(code=1, reason=RAY_TRACEBACK), reply_to=message)]
        return honest(ROSTER)(message, server_round)

    with caplog.at_level(logging.WARNING, logger="fl_iot.round_loop"):
        records, _ = run_loop(ROSTER, FakeGrid([1, 7, 9, 12], answer), num_rounds=3)

    for record in records:
        for device in ("1", "2"):
            assert record.devices[device]["error"] == "ValueError: Invalid learning rate: -0.1"
    logged = [r for r in caplog.records if RAY_TRACEBACK in r.getMessage()]
    assert len(logged) == 1  # two devices, three rounds: one distinct text


def test_error_summaries_are_bounded():
    assert error_summary("device crashed") == "device crashed"
    assert error_summary("") == ""
    assert len(error_summary("Error: " + "x" * 5000)) == 300
    assert error_summary("Traceback (most recent call last):\n  File 'a'\nKeyError: 'x'\n") == (
        "KeyError: 'x'"
    )


ODD_VALUES: dict[str, tuple[dict[str, object], dict[str, object]]] = {
    # case: (changes to the train metrics, changes to the evaluate metrics)
    "huge count": (
        {P.NUM_EXAMPLES: 10**400},
        {P.NUM_EXAMPLES: 10**30, P.CONFUSION: [10**30, 0, 0, 0]},
    ),
    "huge loss": ({P.TRAIN_LOSS: 10**400}, {P.EVAL_LOSS: 10**400}),
    "negative count": ({P.NUM_EXAMPLES: -5}, {P.NUM_EXAMPLES: 0, P.CONFUSION: [50, -50, 0, 0]}),
    "nan loss": ({P.TRAIN_LOSS: float("nan")}, {P.EVAL_LOSS: float("nan")}),
    "list count": ({P.NUM_EXAMPLES: [1, 2]}, {P.NUM_EXAMPLES: [1, 2]}),
    "float matrix": ({}, {P.CONFUSION: [50.5, 0.0, 0.0, 49.5]}),
    "short matrix": ({}, {P.CONFUSION: [100]}),
}
ODD_RECORDS: dict[str, dict[str, object]] = {
    "device id as text": {P.DEVICE: device_record("3")},
    "device as metrics": {P.DEVICE: MetricRecord({P.DEVICE_ID: 3})},
    "metrics as config": {P.METRICS: ConfigRecord({P.NUM_EXAMPLES: "100", P.CONFUSION: "all"})},
}
ODD_CASES = [*ODD_VALUES, *ODD_RECORDS, "no records"]


def odd_reply(message: Message, case: str) -> Message:
    """Device 3's reply with one odd value or record (honest: 10 / 100 examples, all right)."""
    train = message.metadata.message_type == "train"
    metrics: dict[str, object] = (
        {P.NUM_EXAMPLES: 10, P.TRAIN_LOSS: 0.5}
        if train
        else {P.NUM_EXAMPLES: 100, P.EVAL_LOSS: 0.5, P.CONFUSION: [50, 0, 0, 50]}
    )
    metrics.update(ODD_VALUES.get(case, ({}, {}))[0 if train else 1])
    content = RecordDict({P.METRICS: MetricRecord(metrics), P.DEVICE: device_record(3)})  # type: ignore[arg-type]
    for name, record in ODD_RECORDS.get(case, {}).items():
        content[name] = record  # type: ignore[assignment]
    return Message(RecordDict() if case == "no records" else content, reply_to=message)


@pytest.mark.parametrize("case", ODD_CASES)
def test_nothing_a_device_sends_crashes_the_server(case):
    # Node 12 (device 3) sends an odd reply; the others answer honestly.
    def answer(message: Message, server_round: int) -> list[Message]:
        if message.metadata.dst_node_id != 12:
            return honest(ROSTER)(message, server_round)
        return [odd_reply(message, case)]

    records, strategy = run_loop(ROSTER, FakeGrid([1, 7, 9, 12], answer), num_rounds=2)

    for record in records:
        assert record.errors == []
        assert record.replied == 4
        assert len(strategy.train_replies[record.round - 1]) == 4  # the strategy judges it
        assert record.federated["accuracy"] == pytest.approx(0.5)  # the odd one is not pooled
        assert record.federated["num_examples"] == 300
        assert np.isfinite(record.federated["loss"])
        assert "eval_loss" not in record.devices["3"]
        assert record.train.get("loss", 0.5) >= 0.0 and record.train["num_examples"] >= 30


@pytest.mark.parametrize("cap", [0.5, float("nan")])
def test_an_evaluation_cap_below_one_is_refused(cap):
    with pytest.raises(ValueError, match="eval_weight_cap must be >= 1"):
        run_loop(ROSTER, FakeGrid([1], lambda m, r: []), eval_weight_cap=cap)
