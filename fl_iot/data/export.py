"""The exported partition format: one device's data, or the server's share, in a directory.

On real devices each node holds only its own data. ``fl-iot-export`` (:mod:`fl_iot.export_command`)
loads and partitions a run's dataset once and writes, per device, a directory with that device's
local train and test split; and one for the server with the central test split and the sizes its
summary and simulated fleet need, without any device's samples::

    device-3/  partition.json  train.x.npy  train.y.npy  test.x.npy  test.y.npy
    server/    server.json     test.x.npy   test.y.npy

The arrays are the very ones :meth:`fl_iot.data.FederatedData.device_split` gives (``.npy``
keeps dtype and values), so a device trains on its export bit-identically to the partition a
simulation computes. The JSON holds the dataset's :class:`~fl_iot.data.run_data.DatasetInfo`,
every device's natural key (the federation, device classes and attackers, is rebuilt from them
on each node) and the :class:`PartitionSpec` that decided the partition with its fingerprint: a
node refuses an export made for another run's dataset config, device count or seed.

:class:`DeviceExports` (what a node reads: one device's export, or a gateway's several) and
:class:`ServerShare` satisfy :class:`~fl_iot.data.run_data.RunData`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clients.data import LabeledData
from fl_iot.data.run_data import DatasetInfo, RunData
from fl_iot.errors import FlIotError

FORMAT = "fl-iot partition export"
VERSION = 1
DEVICE_FILE = "partition.json"
SERVER_FILE = "server.json"
SERVER_DIR = "server"
_SPLITS = ("train", "test")
_NOT_DECISIVE = ("root", "cache")
"""Dataset keys that say where and how the files were read, not what they hold: a node that
holds an export has no data root, and the exporting machine's may differ from the server's."""


class ExportedDataError(FlIotError):
    """An exported partition is missing, malformed, or not the one this device or run needs."""


def device_dir_name(device_id: int) -> str:
    """The directory ``fl-iot-export`` writes device ``device_id``'s export to."""
    return f"device-{device_id}"


@dataclass(frozen=True)
class PartitionSpec:
    """What decides a run's partition: the scenario's dataset config, device count and seed.

    ``dataset`` is ``scenario.dataset`` as a plain dict; its ``root`` and ``cache`` say where
    the files are read from and are not part of the :attr:`fingerprint`.
    """

    dataset: Mapping[str, Any]
    num_devices: int | None
    seed: int

    def decisive(self) -> dict[str, Any]:
        """The values the fingerprint digests, as an export's JSON records them."""
        dataset = {k: v for k, v in self.dataset.items() if k not in _NOT_DECISIVE}
        return {"dataset": dataset, "num_devices": self.num_devices, "seed": self.seed}

    @property
    def fingerprint(self) -> str:
        """A digest of :meth:`decisive`: equal for two configs that give the same partition."""
        text = json.dumps(self.decisive(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DevicePartition:
    """One device's exported partition: its local train and test split and the run's facts."""

    device_id: int
    train: LabeledData
    test: LabeledData
    info: DatasetInfo
    natural_keys: tuple[str, ...]
    partition: dict[str, Any]  # PartitionSpec.decisive() of the run that exported it
    fingerprint: str


@dataclass(frozen=True)
class DeviceExports:
    """The exported partitions a node holds: one device's, or each of a gateway's devices'.

    A :class:`~fl_iot.data.run_data.RunData` for the devices it holds; asking it for another
    device's data or for the server's share raises :class:`ExportedDataError`.
    """

    source: str  # where it was read from, for messages ("node-config data-path=/data/device-3")
    devices: Mapping[int, DevicePartition]
    info: DatasetInfo
    natural_keys: tuple[str, ...]

    def device_split(self, device_id: int) -> tuple[LabeledData, LabeledData]:
        """The device's local ``(train, test)`` data, as exported."""
        held = self.devices.get(device_id)
        if held is None:
            raise ExportedDataError(
                f"{self.source} holds the data of device(s) {_listed(self.devices)}, not of "
                f"device {device_id}: give this node the export of device {device_id} "
                f"({device_dir_name(device_id)}/ from fl-iot-export)"
            )
        return held.train, held.test

    @property
    def central_test(self) -> LabeledData:
        """Not held by a device: the server's export has it."""
        raise self._server_only("the central test split")

    @property
    def local_train_sizes(self) -> tuple[int, ...]:
        """Not held by a device: the server's export has them."""
        raise self._server_only("every device's training size")

    @property
    def partition_sizes(self) -> tuple[int, ...]:
        """Not held by a device: the server's export has them."""
        raise self._server_only("every device's partition size")

    def _server_only(self, what: str) -> ExportedDataError:
        return ExportedDataError(
            f"{self.source} holds device data only; {what} is in the server's export "
            f"({SERVER_DIR}/ from fl-iot-export)"
        )


@dataclass(frozen=True)
class ServerShare:
    """The server's share of an exported run: the central test split and every device's sizes.

    A :class:`~fl_iot.data.run_data.RunData` without any device's samples.
    """

    info: DatasetInfo
    central_test: LabeledData
    natural_keys: tuple[str, ...]
    local_train_sizes: tuple[int, ...]
    partition_sizes: tuple[int, ...]
    partition: dict[str, Any]  # PartitionSpec.decisive() of the run that exported it
    fingerprint: str

    def device_split(self, device_id: int) -> tuple[LabeledData, LabeledData]:
        """Not held by the server: each device's export has its own."""
        raise ExportedDataError(
            f"the server's export holds no device's data (asked for device {device_id}'s): "
            f"the device's own node holds it ({device_dir_name(device_id)}/)"
        )


def write_device_partition(
    directory: Path, data: RunData, device_id: int, spec: PartitionSpec
) -> Path:
    """Write device ``device_id``'s partition of ``data`` (loaded with ``spec``) to ``directory``.

    Returns the metadata file's path. The JSON is written last: a directory without it was not
    completely written.
    """
    train, test = data.device_split(device_id)
    directory.mkdir(parents=True, exist_ok=True)
    for split, values in zip(_SPLITS, (train, test), strict=True):
        _write_labeled(directory, split, values)
    meta = {
        **_header(data, spec),
        "kind": "device",
        "device_id": int(device_id),
        "samples": {"train": len(train), "test": len(test)},
    }
    return _write_json(directory / DEVICE_FILE, meta)


def write_server_share(directory: Path, data: RunData, spec: PartitionSpec) -> Path:
    """Write the server's share of ``data`` (loaded with ``spec``) to ``directory``.

    Returns the metadata file's path, written last.
    """
    directory.mkdir(parents=True, exist_ok=True)
    _write_labeled(directory, "test", data.central_test)
    meta = {
        **_header(data, spec),
        "kind": "server",
        "local_train_sizes": [int(n) for n in data.local_train_sizes],
        "partition_sizes": [int(n) for n in data.partition_sizes],
    }
    return _write_json(directory / SERVER_FILE, meta)


def read_device_exports(path: Path, spec: PartitionSpec, source: str = "") -> DeviceExports:
    """Read the device export(s) at ``path``, checked against the run's ``spec``.

    ``path`` is one device's export directory, or a directory of ``device-<n>/`` exports (a
    gateway's devices; the exporter's output directory works too). ``source`` names where the
    path came from in messages (default: the path).

    Raises
    ------
    ExportedDataError
        For a missing directory or file, a malformed export, one made for another partition
        (naming the values that differ), or two exports of the same device.
    """
    source = source or str(path)
    if (path / DEVICE_FILE).is_file():
        directories = [path]
    else:
        directories = sorted(p.parent for p in path.glob(f"device-*/{DEVICE_FILE}"))
    if not directories:
        raise ExportedDataError(
            f"{source}: no device export there ({_missing(path, DEVICE_FILE)}, nor any "
            f"device-<n>/{DEVICE_FILE}); write one with fl-iot-export"
        )
    devices: dict[int, DevicePartition] = {}
    for directory in directories:
        device = _read_device_partition(directory, spec, source)
        if device.device_id in devices:
            raise ExportedDataError(
                f"{source}: two exports of device {device.device_id} ({directory})"
            )
        devices[device.device_id] = device
    first = next(iter(devices.values()))
    return DeviceExports(source, devices, first.info, first.natural_keys)


def read_server_share(path: Path, spec: PartitionSpec, source: str = "") -> ServerShare:
    """Read the server's share at ``path``, checked against the run's ``spec``.

    Raises
    ------
    ExportedDataError
        For a missing directory or file, a malformed export, a device's export instead of the
        server's, or one made for another partition (naming the values that differ).
    """
    source = source or str(path)
    meta = _read_json(path / SERVER_FILE, source, spec, kind="server")
    try:
        share = ServerShare(
            info=DatasetInfo.from_json(meta["info"]),
            central_test=_read_labeled(path, "test", source),
            natural_keys=tuple(str(k) for k in meta["natural_keys"]),
            local_train_sizes=tuple(int(n) for n in meta["local_train_sizes"]),
            partition_sizes=tuple(int(n) for n in meta["partition_sizes"]),
            partition=meta["partition"],
            fingerprint=meta["fingerprint"],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ExportedDataError(f"{source}: malformed {SERVER_FILE}: {error!r}") from None
    num_devices = len(share.natural_keys)
    if not len(share.local_train_sizes) == len(share.partition_sizes) == num_devices:
        raise ExportedDataError(
            f"{source}: {SERVER_FILE} lists sizes for another number of devices than its "
            f"{num_devices} natural keys"
        )
    _check_shape(share.central_test, share.info, f"{source}: test")
    return share


def _read_device_partition(directory: Path, spec: PartitionSpec, source: str) -> DevicePartition:
    meta = _read_json(directory / DEVICE_FILE, source, spec, kind="device")
    try:
        device = DevicePartition(
            device_id=int(meta["device_id"]),
            train=_read_labeled(directory, "train", source),
            test=_read_labeled(directory, "test", source),
            info=DatasetInfo.from_json(meta["info"]),
            natural_keys=tuple(str(k) for k in meta["natural_keys"]),
            partition=meta["partition"],
            fingerprint=meta["fingerprint"],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ExportedDataError(
            f"{source}: malformed {directory / DEVICE_FILE}: {error!r}"
        ) from None
    if not 0 <= device.device_id < len(device.natural_keys):
        raise ExportedDataError(
            f"{source}: {directory} holds device {device.device_id}, but its run has "
            f"{len(device.natural_keys)} devices"
        )
    for split in _SPLITS:
        _check_shape(getattr(device, split), device.info, f"{source}: {directory.name} {split}")
    return device


def _header(data: RunData, spec: PartitionSpec) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": spec.fingerprint,
        "partition": spec.decisive(),
        "info": data.info.to_json(),
        "natural_keys": list(data.natural_keys),
    }


def _read_json(path: Path, source: str, spec: PartitionSpec, kind: str) -> dict[str, Any]:
    """The metadata at ``path``, checked to be an export of ``kind`` for ``spec``."""
    if not path.is_file():
        raise ExportedDataError(f"{source}: {_missing(path.parent, path.name)}")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ExportedDataError(f"{source}: {path} is not readable JSON: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExportedDataError(f"{source}: {path} is not an fl-iot partition export")
    if meta.get("version") != VERSION:
        raise ExportedDataError(
            f"{source}: {path} has export format version {meta.get('version')!r}; this fl-iot "
            f"reads version {VERSION}: export the data again with this fl-iot's fl-iot-export"
        )
    if meta.get("kind") != kind:
        raise ExportedDataError(
            f"{source}: {path} is a {meta.get('kind')} export, not a {kind} export"
        )
    if meta.get("fingerprint") != spec.fingerprint:
        differences = _differences(meta.get("partition"), spec.decisive())
        raise ExportedDataError(
            f"{source}: {path.parent} was exported for another partition than this run's "
            f"(fingerprint {meta.get('fingerprint')!r}, this run {spec.fingerprint!r}): "
            + (differences or "its recorded settings are unreadable")
            + "; export again with this run's overrides"
        )
    return meta


def _differences(exported: object, expected: dict[str, Any]) -> str:
    """``key: exported X, this run Y`` for each value that differs, with config paths."""
    if not isinstance(exported, dict):
        return ""
    theirs, ours = _flat(exported), _flat(expected)
    names = {"num_devices": "scenario.num_devices", "seed": "seed"}
    parts = [
        f"{names.get(key, 'scenario.' + key)}: exported {theirs.get(key, '(unset)')!r}, "
        f"this run {ours.get(key, '(unset)')!r}"
        for key in sorted(set(theirs) | set(ours))
        if theirs.get(key) != ours.get(key)
    ]
    return "; ".join(parts)


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _write_labeled(directory: Path, split: str, values: LabeledData) -> None:
    np.save(directory / f"{split}.x.npy", values.x, allow_pickle=False)
    np.save(directory / f"{split}.y.npy", values.y, allow_pickle=False)


def _read_labeled(directory: Path, split: str, source: str) -> LabeledData:
    arrays = []
    for name in (f"{split}.x.npy", f"{split}.y.npy"):
        path = directory / name
        if not path.is_file():
            raise ExportedDataError(f"{source}: {_missing(directory, name)}")
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as error:
            raise ExportedDataError(f"{source}: {path} is not a readable .npy: {error}") from None
    try:
        return LabeledData(arrays[0], arrays[1])
    except ValueError as error:
        raise ExportedDataError(f"{source}: {directory} {split}: {error}") from None


def _check_shape(values: LabeledData, info: DatasetInfo, where: str) -> None:
    shape = tuple(int(d) for d in values.x.shape[1:])
    if shape != info.input_shape:
        raise ExportedDataError(
            f"{where} has samples of shape {list(shape)}, not the dataset's "
            f"{list(info.input_shape)}"
        )


def _missing(directory: Path, name: str) -> str:
    if not directory.is_dir():
        return f"no directory {directory}"
    return f"no file {directory / name}"


def _write_json(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(json.dumps(values, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _listed(devices: Mapping[int, object]) -> str:
    ids = sorted(devices)
    shown = ", ".join(str(d) for d in ids[:10])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > 10 else "")
