"""Each device holds only its own data: ``fl-iot-export``, and the apps reading just their share.

The exports must hold the very arrays the whole dataset's partition gives, and a ClientApp (or a
ServerApp) reading its export must reply exactly as it does from the whole dataset, without
ever loading it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

import fl_iot.device_runtime as runtime
from clients.gateway import unpack
from fl_iot import protocol as P
from fl_iot.client_app import build_client_app
from fl_iot.data import (
    DeviceExports,
    ExportedDataError,
    read_device_exports,
    read_server_share,
    write_device_partition,
    write_server_share,
)
from fl_iot.data.export import SERVER_DIR, device_dir_name
from fl_iot.device_runtime import fresh_model, partition_spec, run_context, train_on_device
from fl_iot.errors import EXIT_CODE_USER_ERROR
from fl_iot.export_command import export_run
from fl_iot.server import run_server
from tests.conftest import REPO_ROOT
from tests.e2e import resolved_config
from tests.in_process_grid import InProcessGrid, set_task_identity
from tests.test_resume import records, strip

RUN = (
    "scenario=healthcare_wearables",  # the bundled MIT-BIH subset: no data root needed
    "scenario.num_devices=4",
    "scenario.num_rounds=2",
    "tracking.sinks=[jsonl,summary]",
)
TIMES = {P.WALL_TIME, P.COMPUTE_TIME}  # measured, so they differ between two trainings


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """Every device's export and the server's share of :data:`RUN`."""
    out = tmp_path_factory.mktemp("export")
    export_run(RUN, out, None)
    return out


def whole_dataset_refused(monkeypatch) -> None:
    """Make loading the whole dataset fail, and forget the runs loaded so far."""

    def refuse(*args, **kwargs):
        raise AssertionError("the whole dataset was loaded")

    monkeypatch.setattr(runtime, "load_federated_data", refuse)
    runtime._BY_IDENTITY.clear()
    runtime._run_context_cached.cache_clear()


def test_an_export_reads_back_the_arrays_of_each_device_split_and_the_server_share(exported):
    run = run_context(resolved_config(*RUN))
    spec = partition_spec(run.cfg)
    everyone = read_device_exports(exported, spec)  # the exporter's directory, as a gateway's
    assert sorted(everyone.devices) == [0, 1, 2, 3]
    for device in range(4):
        alone = read_device_exports(exported / device_dir_name(device), spec)
        assert list(alone.devices) == [device]
        for held in (alone, everyone):
            for mine, theirs in zip(
                held.device_split(device), run.data.device_split(device), strict=True
            ):
                for a, b in ((mine.x, theirs.x), (mine.y, theirs.y)):
                    assert a.dtype == b.dtype and a.shape == b.shape
                    np.testing.assert_array_equal(a, b)
        assert alone.info == run.data.info and alone.natural_keys == run.data.natural_keys
    share = read_server_share(exported / SERVER_DIR, spec)
    np.testing.assert_array_equal(share.central_test.x, run.data.central_test.x)
    np.testing.assert_array_equal(share.central_test.y, run.data.central_test.y)
    assert share.info == run.data.info
    assert share.natural_keys == run.data.natural_keys
    assert share.local_train_sizes == run.data.local_train_sizes
    assert share.partition_sizes == run.data.partition_sizes


def message(content: RecordDict, kind: str) -> Message:
    set_task_identity()
    msg = Message(content, dst_node_id=7, message_type=kind)
    msg.metadata.__dict__["_message_id"] = "m"
    return msg


def replies(cfg, node_config: dict, arrays: ArrayRecord) -> dict[str, Message]:
    """A node's reply to a train and to an evaluate message of round 1."""
    app = build_client_app(lambda _: cfg)
    content = RecordDict({P.ARRAYS: arrays, P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1})})
    out = {}
    for kind in ("train", "evaluate"):
        context = Context(1, 7, dict(node_config), RecordDict(), {})
        out[kind] = app(message(content, kind), context)
    return out


def comparable(content: RecordDict) -> dict:
    out = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            out[name] = {k: v.numpy().tobytes() for k, v in record.items()}
        else:
            out[name] = {k: v for k, v in record.items() if k not in TIMES}
    return out


def test_a_device_replies_from_its_export_as_from_the_whole_dataset_without_loading_it(
    exported, monkeypatch
):
    cfg = resolved_config(*RUN)
    arrays = ArrayRecord(fresh_model(run_context(cfg)).state_dict())
    expected = replies(cfg, {"device-id": 2}, arrays)
    whole_dataset_refused(monkeypatch)
    got = replies(cfg, {"device-id": 2, "data-path": str(exported / "device-2")}, arrays)
    for kind in ("train", "evaluate"):
        assert not got[kind].has_error(), got[kind].error.reason
        assert comparable(got[kind].content) == comparable(expected[kind].content)
    assert got["train"].content[P.METRICS][P.NUM_EXAMPLES] > 0


def test_a_gateway_serves_each_of_its_devices_from_their_exports(exported, tmp_path, monkeypatch):
    cfg = resolved_config(*RUN, "gateways.devices_per_gateway=2")
    arrays = ArrayRecord(fresh_model(run_context(cfg)).state_dict())
    expected = replies(cfg, {"gateway-id": 1}, arrays)
    gateway = tmp_path / "gateway-1"  # only the gateway's devices' exports
    for device in (2, 3):
        shutil.copytree(exported / device_dir_name(device), gateway / device_dir_name(device))
    whole_dataset_refused(monkeypatch)
    got = replies(cfg, {"gateway-id": 1, "data-path": str(gateway)}, arrays)
    for kind in ("train", "evaluate"):
        mine, theirs = unpack(got[kind].content), unpack(expected[kind].content)
        assert sorted(mine) == [2, 3]
        for device in mine:
            assert isinstance(mine[device], RecordDict), mine[device]
            assert comparable(mine[device]) == comparable(theirs[device])


def whole_run(cfg, out: Path, exported: Path | None) -> tuple[list[dict], dict]:
    grid = InProcessGrid(build_client_app(lambda _: cfg), cfg.scenario.num_devices)
    if exported is not None:
        for context in grid.contexts.values():
            device = context.node_config["partition-id"]
            context.node_config["data-path"] = str(exported / device_dir_name(device))
    run_server(grid, cfg, out, server_data=None if exported is None else exported / SERVER_DIR)
    return records(out), json.loads((out / "summary.json").read_text())


def test_a_run_on_exported_data_gives_the_records_of_a_run_on_the_whole_dataset(
    exported, tmp_path, monkeypatch
):
    cfg = resolved_config(*RUN)
    expected, expected_summary = whole_run(cfg, tmp_path / "whole", None)
    whole_dataset_refused(monkeypatch)
    got, summary = whole_run(cfg, tmp_path / "exported", exported)
    assert len(got) == cfg.scenario.num_rounds and got == expected
    for block in ("dataset", "federation", "final", "communication"):
        assert strip(summary[block]) == strip(expected_summary[block]), block


def test_an_export_of_another_partition_is_refused_naming_what_differs(exported):
    other = partition_spec(resolved_config(*RUN, "seed=1", "scenario.dataset.partition=iid"))
    with pytest.raises(ExportedDataError) as refused:
        read_device_exports(exported / "device-1", other, "node-config data-path=/d")
    message = str(refused.value)
    assert message.startswith("node-config data-path=/d: ")
    assert "seed: exported 0, this run 1" in message
    assert "scenario.dataset.partition: exported 'natural', this run 'iid'" in message
    with pytest.raises(ExportedDataError, match="seed: exported 0, this run 1"):
        read_server_share(exported / SERVER_DIR, other)


def test_a_device_asked_for_another_device_names_the_one_its_export_holds(exported):
    cfg = resolved_config(*RUN)
    content = RecordDict(
        {
            P.ARRAYS: ArrayRecord(fresh_model(run_context(cfg)).state_dict()),
            P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1}),
        }
    )
    with pytest.raises(
        ExportedDataError, match=re.escape("holds the data of device(s) 0, not of device 3")
    ):
        train_on_device(cfg, 3, content, RecordDict(), exported / "device-0")


def test_missing_and_misplaced_exports_are_refused_with_their_path(exported, tmp_path):
    spec = partition_spec(resolved_config(*RUN))
    with pytest.raises(ExportedDataError, match=re.escape(f"no directory {tmp_path / 'nowhere'}")):
        read_device_exports(tmp_path / "nowhere", spec)
    with pytest.raises(ExportedDataError, match="no device export there"):
        read_device_exports(exported / SERVER_DIR, spec)
    with pytest.raises(ExportedDataError, match=re.escape("server.json")):
        read_server_share(exported / "device-0", spec)
    broken = tmp_path / "device-0"
    broken.mkdir()
    for name in ("partition.json", "train.x.npy", "train.y.npy"):
        (broken / name).write_bytes((exported / "device-0" / name).read_bytes())
    with pytest.raises(ExportedDataError, match=re.escape(f"no file {broken / 'test.x.npy'}")):
        read_device_exports(broken, spec)


def test_a_device_export_holds_no_server_share_and_the_server_share_no_device(exported):
    spec = partition_spec(resolved_config(*RUN))
    device = read_device_exports(exported / "device-0", spec)
    assert isinstance(device, DeviceExports)
    with pytest.raises(ExportedDataError, match="central test split is in the server's export"):
        _ = device.central_test
    with pytest.raises(ExportedDataError, match="holds no device's data"):
        read_server_share(exported / SERVER_DIR, spec).device_split(0)


def test_writing_then_reading_keeps_a_partition_unchanged(tmp_path):
    run = run_context(resolved_config(*RUN))
    spec = partition_spec(run.cfg)
    write_device_partition(tmp_path / "d", run.data, 1, spec)
    write_server_share(tmp_path / "s", run.data, spec)
    meta = json.loads((tmp_path / "d" / "partition.json").read_text())
    assert meta["device_id"] == 1 and meta["fingerprint"] == spec.fingerprint
    assert meta["natural_keys"] == list(run.data.natural_keys)
    assert "root" not in meta["partition"]["dataset"]  # where files were read is not decisive
    assert read_server_share(tmp_path / "s", spec).fingerprint == spec.fingerprint


def test_the_export_command_is_a_console_script():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["fl-iot-export"] == "fl_iot.export_command:main"
    assert "server-data" in pyproject["tool"]["flwr"]["app"]["config"]


def export_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fl_iot.export_command", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--devices", "0", "9"), "--devices 9: no such device; this run has 4 devices (0..3)"),
        (("scenario.num_devicez=4",), "scenario.num_devicez"),
        (("scenario=nowhere",), "nowhere"),
        (("--devices", "0", "seed=1"), "Hydra overrides go before --devices"),
    ],
    ids=["unknown-device", "bad-key", "bad-scenario", "override-after-devices"],
)
def test_the_export_command_refuses_bad_input_in_one_message(tmp_path, args, said):
    done = export_cli(
        "scenario=healthcare_wearables", "scenario.num_devices=4", "--out", str(tmp_path), *args
    )
    assert done.returncode == EXIT_CODE_USER_ERROR, done.stderr
    assert said in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "server").exists()


@pytest.mark.e2e
def test_the_export_command_writes_the_devices_asked_for_and_the_server_share(tmp_path):
    done = export_cli(*RUN, "--out", str(tmp_path), "--devices", "3", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / d) for d in ("device-1", "device-3", "server")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device-1", "device-3", "server"]
