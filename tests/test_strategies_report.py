"""Round reports: the typed record, its dict for metrics.jsonl, and merging a wrapped report."""

from __future__ import annotations

import json

from strategies import DEVICE_KEYS, DeviceReport, RoundReport
from strategies.report import device_entry, merge_reports


def test_a_round_not_aggregated_reports_only_what_applies() -> None:
    assert RoundReport("S", 4).to_dict() == {
        "strategy": "S",
        "round": 4,
        "rejected": {},
        "devices": {},
    }


def test_a_device_entry_has_every_key_and_no_nan() -> None:
    entry = device_entry(
        "accepted", weight=float("nan"), quality=1, signals={"norm_z": float("inf")}
    )
    assert tuple(RoundReport("S", 1, devices={"3": entry}).to_dict()["devices"]["3"]) == DEVICE_KEYS
    assert entry.weight is None and entry.quality == 1.0 and entry.signals == {"norm_z": None}


def test_a_wrapped_strategys_dict_report_merges_into_the_wrappers() -> None:
    # Prepare: the wrapper scored devices 1 and 2 and refused 2; a third-party inner strategy
    # weighted device 1 and reports something of its own
    outer = RoundReport(
        "Wrapper(Inner)",
        2,
        rejected={"2": "update norm too large"},
        devices={
            "1": DeviceReport("accepted", anomaly_score=0.2),
            "2": DeviceReport("anomalous", weight=0.0, anomaly_score=3.0),
        },
        num_replies=2,
        num_accepted=1,
        late=[],
    )
    inner = RoundReport.from_dict(
        {
            "strategy": "Inner",
            "round": 2,
            "rejected": {},
            "late": ["7"],
            "devices": {"1": {"status": "accepted", "weight": 1.0}},
            "clipping": {"norm": 5.0},
        }
    )
    # Execute
    merged = merge_reports(outer, inner)
    # Assert
    assert merged.rejected == {"2": "update norm too large"}
    assert merged.late == ["7"]
    assert merged.devices["1"] == DeviceReport("accepted", weight=1.0, anomaly_score=0.2)
    assert merged.devices["2"].weight == 0.0
    assert merged.inner == {"strategy": "Inner", "clipping": {"norm": 5.0}}
    assert json.loads(json.dumps(merged.to_dict())) == merged.to_dict()
    assert inner.devices["1"].anomaly_score is None  # the inner report is not changed
