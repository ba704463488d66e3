"""Identity comes from the roster and the message a reply answers, never from the reply itself.

A reply belongs to the node its message was sent to (``reply_to_message_id``): on the
Deployment Engine the SuperLink answers for a dead node with an error reply from its own node id
(1). That node is a device through the roster; a reply that claims another device is a spoof.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
from flwr.serverapp.strategy import FedAvg, Strategy

from strategies import (
    AnomalyRejection,
    ReliabilityWeightedFedAvg,
    answered_node,
    sent_destinations,
)
from strategies.central_dp import CentralDP
from strategies.validation import check_roster
from tests.test_strategies_support import (
    FakeGrid,
    arrayrecord,
    task_identity,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.usefixtures("task_identity")

D = 32
GLOBAL = {"w": np.zeros(D, np.float32)}
NODES = [1, *range(101, 108)]  # node 1 is a device too: the SuperLink's own node id
ROSTER = {node: str(i) for i, node in enumerate(NODES)}  # node 1 -> "0", 101 -> "1", ...


def _trusted() -> AnomalyRejection:
    return AnomalyRejection(ReliabilityWeightedFedAvg(min_available_nodes=len(NODES)))


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "reliability": lambda: ReliabilityWeightedFedAvg(min_available_nodes=len(NODES)),
    "trusted_fedavg": lambda: AnomalyRejection(FedAvg(min_available_nodes=len(NODES))),
    "trusted": _trusted,
}


def _send(strategy: Strategy, server_round: int, nodes: list[int]) -> dict[int, Message]:
    """configure_train, then push as a grid does (it writes each message's id); by node."""
    messages = list(
        strategy.configure_train(server_round, arrayrecord(GLOBAL), ConfigRecord(), FakeGrid(nodes))  # type: ignore[arg-type]
    )
    for message in messages:
        message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return {m.metadata.dst_node_id: m for m in messages}


def _update(i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    direction = np.random.default_rng(0).standard_normal(D)
    return {"w": (direction + 0.3 * rng.standard_normal(D)).astype(np.float32) * (1 + i / 20)}


def _reply_to(message: Message, update: dict[str, np.ndarray], claim: int | None) -> Message:
    """The reply a ClientApp sends to ``message``, claiming to be device ``claim`` (if given)."""
    content: dict[str, object] = {
        "arrays": arrayrecord(update),
        "metrics": MetricRecord({"num-examples": 50}),
    }
    if claim is not None:
        content["device"] = ConfigRecord({"device-id": claim, "device-class": "test"})
    return Message(RecordDict(content), reply_to=message)  # type: ignore[arg-type]


def _round(
    strategy: Strategy, server_round: int, claims: dict[int, int] | None = None
) -> list[Message]:
    """Every node of NODES replies honestly, claiming its roster device or ``claims[node]``."""
    rng = np.random.default_rng(server_round)
    sent = _send(strategy, server_round, NODES)
    replies = []
    for i, node in enumerate(NODES):
        claim = (claims or {}).get(node, i)
        replies.append(_reply_to(sent[node], _update(i, rng), claim))
    return replies


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_spoofing_node_is_rejected_and_logged_and_the_real_device_keeps_its_reply(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: node 103 (device 3) claims to be device 5, whose own node 105 replies too
    strategy = STRATEGIES[name]()
    strategy.set_roster(ROSTER)  # type: ignore[attr-defined]
    replies = _round(strategy, 1, claims={103: 5})
    # Execute
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy.aggregate_train(1, replies)
    report = strategy.round_report(1)  # type: ignore[attr-defined]
    # Assert: only the liar is out, under its own device, and it is said why
    assert report.rejected == {"3": "spoof: claims device 5, the roster says 3"}
    assert report.devices["3"].status == "spoof"
    assert report.devices["5"].status == "accepted"
    assert report.num_accepted == len(NODES) - 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("spoof" in m and "node 103" in m for m in warnings), warnings


def test_reputation_cannot_be_taken_over_by_claiming_another_device() -> None:
    # Prepare: over three rounds node 103 always claims device 5; a second run without it
    spoofed, clean = _trusted(), _trusted()
    for strategy in (spoofed, clean):
        strategy.set_roster(ROSTER)
    # Execute
    for server_round in (1, 2, 3):
        spoofed.aggregate_train(server_round, _round(spoofed, server_round, claims={103: 5}))
        clean.aggregate_train(server_round, _round(clean, server_round))
    # Assert: device 5's history is exactly what it is without the liar; the liar's sinks
    assert spoofed.tracker.history("5", 4) == clean.tracker.history("5", 4)
    assert spoofed.tracker.reliability("5", 4) == clean.tracker.reliability("5", 4)
    assert spoofed.tracker.reliability("3", 4) < 0.3 < clean.tracker.reliability("3", 4)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_without_a_roster_devices_are_node_ids_and_claims_are_ignored(name: str) -> None:
    strategy = STRATEGIES[name]()
    strategy.aggregate_train(1, _round(strategy, 1, claims={103: 5, 104: 5}))
    report = strategy.round_report(1)  # type: ignore[attr-defined]
    assert report.rejected == {}
    assert set(report.devices) == {str(n) for n in NODES}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_node_outside_the_roster_is_refused_and_no_device_is_charged(name: str) -> None:
    # Prepare: node 999 is sampled but not in the roster (it connected after the roll call)
    strategy = STRATEGIES[name]()
    strategy.set_roster(ROSTER)  # type: ignore[attr-defined]
    sent = _send(strategy, 1, [*NODES, 999])
    rng = np.random.default_rng(0)
    replies = [_reply_to(sent[n], _update(i, rng), i) for i, n in enumerate(NODES)]
    replies.append(_reply_to(sent[999], _update(0, rng), 4))
    # Execute
    strategy.aggregate_train(1, replies)
    report = strategy.round_report(1)  # type: ignore[attr-defined]
    # Assert
    assert report.unknown_nodes == {"999": "node 999 is not in the roster"}
    assert report.rejected == {} and report.num_accepted == len(NODES)
    assert set(report.devices) == set(ROSTER.values())
    tracker = getattr(strategy, "tracker", None)
    if tracker is not None:
        assert tracker.devices() == sorted(ROSTER.values())


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_the_superlinks_error_reply_for_a_dead_node_is_charged_to_that_nodes_device(
    name: str,
) -> None:
    # Prepare: node 107 (device 7) is dead; the SuperLink answers its message itself, from its
    # own node id 1, which is also device 0's node. Node 106 (device 6) never answers at all.
    strategy = STRATEGIES[name]()
    strategy.set_roster(ROSTER)  # type: ignore[attr-defined]
    sent = _send(strategy, 1, NODES)
    rng = np.random.default_rng(0)
    replies = [
        _reply_to(sent[n], _update(i, rng), i) for i, n in enumerate(NODES) if n not in (106, 107)
    ]
    dead = create_message_error_unavailable_res_message(sent[107].metadata, "node_unavail")
    assert dead.metadata.src_node_id == 1 and dead.has_error()
    # Execute
    strategy.aggregate_train(1, [*replies, dead])
    report = strategy.round_report(1)  # type: ignore[attr-defined]
    # Assert: device 7 failed, device 6 is late, device 0 (node 1) is accepted and blameless
    assert list(report.rejected) == ["7"]
    assert report.rejected["7"].startswith("error reply:")
    assert report.late == ["6"]
    assert report.devices["0"].status == "accepted"
    tracker = getattr(strategy, "tracker", None)
    if tracker is not None:
        assert tracker.history("7", 2)["failed"] == 1.0
        assert tracker.history("0", 2)["failed"] == 0.0


def test_answered_node_follows_the_message_a_reply_answers() -> None:
    # Prepare: messages to nodes 7 and 8, pushed; one never pushed (no id)
    strategy = FedAvg(min_available_nodes=2)
    sent_messages = _send(strategy, 1, [7, 8])
    unpushed = Message(RecordDict({}), dst_node_id=9, message_type="train")
    sent = sent_destinations([*sent_messages.values(), unpushed])
    # Execute / Assert
    assert sorted(sent.values()) == [7, 8]
    dead = create_message_error_unavailable_res_message(sent_messages[7].metadata, "node_unavail")
    assert answered_node(dead, sent) == 7
    assert answered_node(_reply_to(sent_messages[8], GLOBAL, None), sent) == 8
    assert answered_node(_reply_to(unpushed, GLOBAL, None), sent) is None


def test_wrappers_pass_the_roster_on() -> None:
    inner = ReliabilityWeightedFedAvg()
    AnomalyRejection(inner).set_roster({5: "1"})
    assert inner.roster == {5: "1"}
    inner = ReliabilityWeightedFedAvg()
    CentralDP(inner, 1.0, 1.0, num_sampled_devices=2, num_devices=2).set_roster({5: 2})  # type: ignore[dict-item]
    assert inner.roster == {5: "2"}
    AnomalyRejection(FedAvg()).set_roster({5: "1"})  # Flower's FedAvg keys nothing


@pytest.mark.parametrize(
    ("roster", "message"),
    [
        ({1: "a", 2: "a"}, "device a is on two nodes, 1 and 2"),
        ({"1": "a"}, "node ids must be ints, got '1'"),
        ({1: ""}, "device keys must be non-empty strings or ints, got ''"),
        ({1: True}, "got True for node 1"),
        ([1, 2], "roster must map node ids to device keys, got list"),
    ],
)
def test_a_malformed_roster_is_refused_with_a_clear_message(roster: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_roster(roster)  # type: ignore[arg-type]
