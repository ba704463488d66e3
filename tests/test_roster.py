"""The roll call: its own short timeout, and a failure that names the missing devices."""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest
from flwr.app import Message, RecordDict

from fl_iot.client_app import build_client_app
from fl_iot.roster import PollingGrid, RosterError, take_roll_call
from tests.e2e import resolved_config
from tests.in_process_grid import InProcessGrid, OfflineGrid, set_task_identity


def grid(num_nodes: int, silent: set[int] = frozenset(), **overrides: str) -> InProcessGrid:
    cfg = resolved_config("scenario.num_devices=6", *overrides)
    return InProcessGrid(
        build_client_app(lambda _: cfg),
        num_nodes,
        fault=lambda partition, message: "silent" if partition in silent else None,
    )


def test_a_device_that_does_not_answer_is_named_with_how_many_nodes_connected():
    with pytest.raises(RosterError) as refused:
        take_roll_call(grid(6, silent={2, 4}), 6, timeout_s=0.2)
    assert str(refused.value) == (
        "roll call: 6 of 6 nodes connected within 0.2 s; 4 answered for 4 of 6 devices; "
        "missing devices: 2, 4"
    )


def test_nodes_that_never_connect_are_waited_for_only_the_roll_call_timeout():
    started = time.monotonic()
    with pytest.raises(
        RosterError,
        match=r"4 of 6 nodes connected within 0.5 s; 4 answered "
        r"for 4 of 6 devices; missing devices: 4, 5",
    ):
        take_roll_call(grid(4), 6, timeout_s=0.5)
    assert time.monotonic() - started < 5


def test_a_long_list_of_missing_devices_is_cut_short():
    with pytest.raises(RosterError, match=r"missing devices: 3, 4, 5, .*, 22 and 17 more"):
        take_roll_call(grid(3), 40, timeout_s=0.1)


def test_the_roll_call_timeout_is_its_own_setting_and_is_checked():
    from fl_iot.errors import ConfigError

    assert resolved_config().engine.roll_call_timeout_s == 120
    with pytest.raises(ConfigError, match=r"engine\.roll_call_timeout_s"):
        resolved_config("engine.roll_call_timeout_s=0")


class SlowRepliesGrid(OfflineGrid):
    """Answers each message on the third pull; its own send_and_receive must not be used."""

    def __init__(self) -> None:
        self.pulls = 0
        self.pushed: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return [5]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        for message in messages:
            self.push(message)
            self.pushed.append(message)
        return [m.metadata.message_id for m in self.pushed]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        if self.pulls < 3:
            return []
        return [Message(RecordDict(), reply_to=m) for m in self.pushed]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        raise AssertionError("Flower's send_and_receive sleeps 3 s between pulls")


def test_a_polling_grid_pulls_replies_at_its_own_pace():
    set_task_identity()
    slow = SlowRepliesGrid()
    message = Message(RecordDict(), dst_node_id=5, message_type="train")
    started = time.monotonic()

    replies = list(PollingGrid(slow, interval=0.05).send_and_receive([message], timeout=10))

    assert [r.metadata.reply_to_message_id for r in replies] == [message.metadata.message_id]
    assert slow.pulls == 3
    assert time.monotonic() - started < 1.0
