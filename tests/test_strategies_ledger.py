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
    unanswered = {"4": Outcome.LATE, "5": Outcome.FAILED}
    record_round(tracker, 1, [("0", 0.5, -1.0)], rejections, unanswered, {"0": -1.0})
    report = round_report("S", 1, 4, 1, {}, rejections, ["4"], tracker, "boom")
    # Assert
    assert tracker.history("0", 2)["good"] == pytest.approx(0.5)
    assert tracker.history("1", 2)["failed"] == 1.0
    assert tracker.history("2", 2)["anomaly"] == 1.0  # a spoof counts as malformed content
    assert tracker.history("4", 2)["late"] == 1.0
    assert tracker.history("5", 2)["failed"] == 1.0
    assert tracker.history("node-999", 2)["observations"] == 0
    assert report.rejected == {"1": rejections[0].reason, "2": rejections[1].reason}
    assert report.unknown_nodes == {"999": rejections[2].reason}
    assert [report.devices[d].status for d in ("1", "2")] == ["failed", "spoof"]
    assert report.error == "boom"
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()


def test_reported_outcomes_replace_the_inference_of_lateness() -> None:
    from strategies.ledger import RoundLedger

    ledger = RoundLedger()
    roster = {11: "1", 12: "2", 13: "3"}
    ledger.observe_outcomes(3, {13: "late", 11: "failed", 12: "offline", 99: "late"})

    assert ledger.unanswered(3, [], roster) == {
        "1": Outcome.FAILED,
        "2": Outcome.LATE,  # found offline counts like late
        "3": Outcome.LATE,
    }
    assert ledger.unanswered(3, [], roster) == {}  # taken once; nothing was sent to infer from
    with pytest.raises(ValueError, match="outcome of node 11 must be one of"):
        ledger.observe_outcomes(4, {11: "vanished"})


def test_the_wrappers_pass_reported_outcomes_on() -> None:
    from flwr.serverapp.strategy import FedAvg

    from strategies import AnomalyRejection, CentralDP, ReliabilityWeightedFedAvg

    inner, under_dp = ReliabilityWeightedFedAvg(), ReliabilityWeightedFedAvg()
    AnomalyRejection(inner).observe_outcomes(2, {7: "failed"})
    CentralDP(under_dp, 1.0, 1.0, 2, 4).observe_outcomes(2, {7: "late"})

    assert inner._ledger.unanswered(2, [], {7: "3"}) == {"3": Outcome.FAILED}
    assert under_dp._ledger.unanswered(2, [], {7: "3"}) == {"3": Outcome.LATE}
    CentralDP(FedAvg(), 1.0, 1.0, 2, 4).observe_outcomes(1, {1: "late"})  # nothing to tell
