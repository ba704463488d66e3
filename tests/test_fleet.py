"""The simulated fleet: availability, links, battery, the verdicts of a dispatch, traces."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from fl_iot.errors import ConfigError
from fl_iot.fleet import (
    AvailabilityConditions,
    BatteryConditions,
    DeviceConditions,
    DeviceOutcome,
    FleetConfig,
    FleetDevice,
    FleetSimulator,
    LinkConditions,
    Spread,
    Timeline,
    read_trace,
    write_trace,
)
from fl_iot.fleet.links import transfer
from tests.conftest import REPO_ROOT

HOUR = 3600.0


def generated(conditions: AvailabilityConditions, seed: int = 0) -> Timeline:
    return Timeline(conditions=conditions, rng=np.random.default_rng(seed), start_hour=0.0)


def test_a_daily_window_without_churn_is_online_exactly_inside_it():
    timeline = generated(AvailabilityConditions(online_hours=[[7, 23]], mean_offline_s=0.0))

    assert not timeline.online_at(6.9 * HOUR)
    assert timeline.online_at(7.0 * HOUR)
    assert timeline.session_end(12 * HOUR) == 23 * HOUR
    assert not timeline.online_at(23.5 * HOUR)
    assert timeline.next_online(23.5 * HOUR) == 31 * HOUR  # 07:00 the next day


def test_churn_cuts_sessions_to_the_configured_online_share():
    conditions = AvailabilityConditions(
        online_hours=[[0, 24]], mean_online_s=600.0, mean_offline_s=200.0
    )
    timeline = generated(conditions)
    days = 20
    sessions = timeline.sessions_until(days * 24 * HOUR)
    online = sum(min(e, days * 24 * HOUR) - s for s, e in sessions) / (days * 24 * HOUR)

    assert online == pytest.approx(0.75, abs=0.03)
    assert np.mean([e - s for s, e in sessions]) == pytest.approx(600.0, rel=0.15)


def test_jitter_shifts_each_device_within_its_bound():
    conditions = AvailabilityConditions(online_hours=[[7, 9]], jitter_h=1.0, mean_offline_s=0.0)
    starts = [generated(conditions, seed).next_online(0.0) for seed in range(50)]

    assert all(6 * HOUR <= s <= 8 * HOUR for s in starts)  # type: ignore[operator]
    assert len(set(starts)) == 50


def test_a_trace_timeline_merges_touching_sessions_and_ends():
    timeline = Timeline([(10.0, 20.0), (0.0, 5.0), (20.0, 30.0)])

    assert timeline.session_end(12.0) == 30.0
    assert not timeline.online_at(7.0)
    assert timeline.next_online(7.0) == 10.0
    assert timeline.next_online(31.0) is None


def test_a_transfer_takes_latency_plus_bytes_over_bandwidth():
    link = LinkConditions(
        uplink_kbps=Spread(8.0), downlink_kbps=Spread(80.0), latency_ms=Spread(250.0)
    )
    rng = np.random.default_rng(0)

    assert transfer(1000, link, uplink=True, rng=rng).seconds == pytest.approx(1.25)
    assert transfer(1000, link, uplink=False, rng=rng).seconds == pytest.approx(0.35)
    assert transfer(10**6, None, uplink=True, rng=rng) == (0.0, False)


def test_a_link_breaks_at_its_probability():
    link = LinkConditions(break_probability=0.3)
    rng = np.random.default_rng(1)
    broke = [transfer(100, link, True, rng).broke for _ in range(4000)]

    assert np.mean(broke) == pytest.approx(0.3, abs=0.03)


def fleet_of(conditions: DeviceConditions, steps: int = 10, **config: object) -> FleetSimulator:
    cfg = FleetConfig(name="test", step_time_s=1.0, classes={"c": conditions}, **config)  # type: ignore[arg-type]
    devices = {d: FleetDevice("c", conditions, steps, relative_speed=0.5) for d in range(4)}
    return FleetSimulator(cfg, devices, seed=0)


ALWAYS = AvailabilityConditions(online_hours=[[0, 24]], mean_offline_s=0.0)


def test_a_dispatch_times_download_compute_and_upload():
    link = LinkConditions(
        uplink_kbps=Spread(8.0), downlink_kbps=Spread(16.0), latency_ms=Spread(0.0)
    )
    fleet = fleet_of(DeviceConditions(availability=ALWAYS, link=link), steps=10)
    verdict = fleet.dispatch(0, 1, 100.0, download_bytes=2000)

    assert verdict.trains and verdict.cutoff_steps is None
    assert verdict.download_s == pytest.approx(1.0)
    assert verdict.compute_s == pytest.approx(20.0)  # 10 steps x 1 s / relative speed 0.5
    arrival = fleet.arrive(verdict, 1, upload_bytes=3000)
    assert arrival.outcome == DeviceOutcome.ON_TIME
    assert arrival.arrival_s == pytest.approx(100.0 + 1.0 + 20.0 + 3.0)


def test_a_device_whose_session_ends_mid_training_is_cut_off_at_the_last_full_step():
    short = AvailabilityConditions(online_hours=[[0, 20]], mean_offline_s=0.0)
    fleet = fleet_of(DeviceConditions(availability=short), steps=10, start_hour=0.0)
    # The session ends at 20 h; 7 s before it, 3 of the 10 steps (2 s each) fit.
    verdict = fleet.dispatch(0, 1, 20 * HOUR - 7.0, download_bytes=0)

    assert verdict.cutoff_steps == 3
    assert verdict.reason == "went offline mid-training"
    assert verdict.quiet_s == pytest.approx(20 * HOUR - 1.0)


def test_offline_and_failing_devices_get_their_verdicts():
    night = AvailabilityConditions(online_hours=[[8, 20]], mean_offline_s=0.0)
    fleet = fleet_of(DeviceConditions(availability=night), start_hour=0.0, failure_rate=1.0)

    assert fleet.dispatch(0, 1, 2 * HOUR, 0).outcome == DeviceOutcome.OFFLINE
    verdict = fleet.dispatch(0, 1, 10 * HOUR, 0)
    assert verdict.trains and verdict.reason == "failed mid-training"
    assert 0 <= verdict.cutoff_steps < 10  # type: ignore[operator]


def test_a_battery_below_its_level_declines_and_recharges_overnight():
    day = AvailabilityConditions(online_hours=[[0, 16]], mean_offline_s=0.0)
    battery = BatteryConditions(
        min_level=0.5, drain_per_hour=0.05, drain_per_training=0.0, max_start_shortfall=0.0
    )
    fleet = fleet_of(DeviceConditions(availability=day, battery=battery), start_hour=0.0)

    assert fleet.battery_level(0, 5 * HOUR) == pytest.approx(0.75)
    assert fleet.dispatch(0, 1, 5 * HOUR, 0).trains
    assert fleet.dispatch(0, 2, 11 * HOUR, 0).outcome == DeviceOutcome.DECLINED
    assert fleet.battery_level(0, 24 * HOUR + 1.0) == pytest.approx(1.0, abs=1e-4)


def test_trainings_drain_the_battery():
    battery = BatteryConditions(
        min_level=0.0, drain_per_hour=0.0, drain_per_training=0.1, max_start_shortfall=0.0
    )
    fleet = fleet_of(DeviceConditions(availability=ALWAYS, battery=battery))
    for server_round in range(3):
        fleet.dispatch(0, server_round, 10.0 * server_round, 0)

    assert fleet.battery_level(0, 100.0) == pytest.approx(0.7)


def test_verdicts_do_not_depend_on_which_other_devices_were_asked():
    conditions = DeviceConditions(
        availability=AvailabilityConditions(mean_online_s=900.0, mean_offline_s=300.0),
        link=LinkConditions(uplink_kbps=Spread(100.0, 1.0), break_probability=0.2),
        mid_training_failure=0.3,
    )
    alone, crowded = fleet_of(conditions), fleet_of(conditions)
    for d in (0, 1, 2):
        crowded.dispatch(d, 5, 1000.0, 500)

    assert alone.dispatch(2, 5, 1000.0, 500) == crowded.dispatch(2, 5, 1000.0, 500)


def test_an_ideal_fleet_is_instant_and_always_online():
    fleet = fleet_of(DeviceConditions())
    fleet.config.step_time_s = 0.0
    verdict = fleet.dispatch(0, 1, 0.0, 10**6)

    assert verdict.trains and verdict.download_s == 0.0 and verdict.compute_s == 0.0
    assert fleet.arrive(verdict, 1, 10**6).arrival_s == 0.0
    assert FleetConfig().ideal and not FleetConfig(step_time_s=1.0).ideal


def test_a_trace_round_trips_and_names_bad_rows(tmp_path):
    path = tmp_path / "trace.csv"
    write_trace(path, {1: [(0.0, 60.0), (120.0, math.inf)], 0: [(5.0, 6.0)]}, note="synthetic")

    assert path.read_text().splitlines()[0] == "# synthetic"
    assert read_trace(path) == {0: [(5.0, 6.0)], 1: [(0.0, 60.0), (120.0, math.inf)]}
    path.write_text("device,online_from,online_until\n0,1.0,2.0\n0,5.0,4.0\n")
    with pytest.raises(ConfigError, match=r"row 3: need 0 <= online_from < online_until"):
        read_trace(path)
    path.write_text("device,online_from,online_until\nx,1,2\n")
    with pytest.raises(ConfigError, match=r"row 2: expected device,online_from,online_until"):
        read_trace(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        read_trace(tmp_path / "missing.csv")


def test_a_replayed_trace_sets_availability(tmp_path):
    fleet = fleet_of(DeviceConditions(availability=ALWAYS))
    fleet.trace = {0: [(100.0, 200.0)]}

    assert fleet.dispatch(0, 1, 50.0, 0).outcome == DeviceOutcome.OFFLINE
    assert fleet.dispatch(0, 1, 150.0, 0).trains
    assert fleet.dispatch(1, 1, 150.0, 0).outcome == DeviceOutcome.OFFLINE  # not in the trace


def test_the_shipped_trace_is_synthetic_and_replays(tmp_path):
    shipped = REPO_ROOT / "fl_iot" / "assets" / "traces" / "healthcare_wearables_synthetic.csv"

    assert shipped.read_text().startswith("# synthetic:")
    sessions = read_trace(shipped)
    assert len(sessions) == 47


def test_the_generator_writes_a_scenario_trace(tmp_path):
    out = tmp_path / "t.csv"
    command = ["-m", "fl_iot.fleet", "--days", "1", "--out", str(out)]  # bundled healthcare data
    result = subprocess.run(
        [sys.executable, *command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stderr
    assert out.read_text().startswith("# synthetic")
    assert set(read_trace(out)) == set(range(47))


def test_the_generator_refuses_a_scenario_without_its_data_in_one_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FL_IOT_DATA_ROOT"}
    result = subprocess.run(
        [sys.executable, "-m", "fl_iot.fleet", "--scenario", "smart_home", "--out", "x.csv"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 2
    assert "dataset 'occupancy' not found" in result.stderr
    assert "Traceback" not in result.stderr
