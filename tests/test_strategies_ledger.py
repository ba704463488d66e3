"""The bookkeeping both trusted strategies share: outcomes, history and the report skeleton."""

from __future__ import annotations

import json

import pytest

from strategies.ledger import TRACKER_OUTCOME, record_round, round_report
from strategies.reliability import OUTCOMES, Outcome, ReliabilityTracker
from strategies.validation import Rejection, RejectionKind


def test_every_rejection_kind_of_a_device_has_one_reliability_outcome() -> None:
    assert set(TRACKER_OUTCOME) == set(RejectionKind) - {RejectionKind.UNKNOWN}
    assert set(TRACKER_OUTCOME.values()) <= set(Outcome)
    assert OUTCOMES == ("completed", "late", "failed", "malformed", "rejected")


def test_an_outcome_given_as_enum_or_string_leaves_the_same_plain_state() -> None:
    by_enum, by_string = ReliabilityTracker(), ReliabilityTracker()
    for round_, outcome in enumerate(Outcome, start=1):
        by_enum.observe("7", round_, outcome)
        by_string.observe("7", round_, outcome.value)
    assert json.dumps(by_enum.state_dict()) == json.dumps(by_string.state_dict())
    with pytest.raises(ValueError, match="outcome must be one of"):
        by_enum.observe("7", 9, "vanished")


def test_a_round_is_recorded_once_per_device_and_unknown_nodes_are_no_devices() -> None:
    # Prepare
    tracker = ReliabilityTracker()
    rejections = [
        Rejection("1", 101, "error reply: no battery", RejectionKind.FAILED),
        Rejection("2", 102, "spoof: claims device 3, the roster says 2", RejectionKind.SPOOF),
        Rejection("node-999", 999, "node 999 is not in the roster", RejectionKind.UNKNOWN),
    ]
    # Execute
    record_round(tracker, 1, [("0", 0.5, -1.0)], rejections, ["4"], {"0": -1.0})
    report = round_report("S", 1, 4, 1, {}, rejections, ["4"], tracker, "boom")
    # Assert
    assert tracker.history("0", 2)["good"] == pytest.approx(0.5)
    assert tracker.history("1", 2)["failed"] == 1.0
    assert tracker.history("2", 2)["anomaly"] == 1.0  # a spoof counts as malformed content
    assert tracker.history("4", 2)["late"] == 1.0
    assert tracker.history("node-999", 2)["observations"] == 0
    assert report.rejected == {"1": rejections[0].reason, "2": rejections[1].reason}
    assert report.unknown_nodes == {"999": rejections[2].reason}
    assert [report.devices[d].status for d in ("1", "2")] == ["failed", "spoof"]
    assert report.error == "boom"
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()
