"""What a run reads of its data, wherever the data comes from.

In simulation every process loads the whole dataset and partitions it
(:class:`~fl_iot.data.FederatedData`). On real devices each node holds only its own partition
and the server only the central evaluation split (:mod:`fl_iot.data.export`). Both satisfy
:class:`RunData`, so the device runtime and the server read their data one way; a share that
lacks a part (a device's export has no central test split, the server's has no device data)
raises a :class:`~fl_iot.errors.FlIotError` naming what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from clients.data import LabeledData
from fl_iot.data.base import RawData, SourceDataset


@dataclass(frozen=True)
class DatasetInfo:
    """What a run says about its dataset, without holding any sample.

    The model's shape (``input_shape``, ``num_classes``), ``summary.json``'s ``dataset`` block
    and the raw-upload baseline (``raw``) come from here.
    """

    name: str
    description: str
    synthetic: bool
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    train_samples: int
    central_test_samples: int
    raw: RawData | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @classmethod
    def of(cls, source: SourceDataset) -> DatasetInfo:
        """The information of a loaded dataset."""
        return cls(
            name=source.name,
            description=source.description,
            synthetic=source.synthetic,
            class_names=tuple(source.class_names),
            input_shape=source.input_shape,
            train_samples=len(source.train),
            central_test_samples=len(source.test),
            raw=source.raw,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (:meth:`from_json` reads it back)."""
        raw = self.raw
        return {
            "name": self.name,
            "description": self.description,
            "synthetic": self.synthetic,
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            "train_samples": self.train_samples,
            "central_test_samples": self.central_test_samples,
            "raw": None
            if raw is None
            else {
                "bytes_per_example": raw.bytes_per_example,
                "bytes_per_second": raw.bytes_per_second,
                "basis": raw.basis,
            },
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> DatasetInfo:
        """Read what :meth:`to_json` wrote (a missing key raises ``KeyError``)."""
        raw = values["raw"]
        return cls(
            name=str(values["name"]),
            description=str(values["description"]),
            synthetic=bool(values["synthetic"]),
            class_names=tuple(str(c) for c in values["class_names"]),
            input_shape=tuple(int(d) for d in values["input_shape"]),
            train_samples=int(values["train_samples"]),
            central_test_samples=int(values["central_test_samples"]),
            raw=None
            if raw is None
            else RawData(
                bytes_per_example=float(raw["bytes_per_example"]),
                bytes_per_second=float(raw["bytes_per_second"]),
                basis=str(raw["basis"]),
            ),
        )


class RunData(Protocol):
    """The data of a run as the device runtime and the server read it.

    ``natural_keys`` is every device's natural key: the federation (device classes, attackers)
    is built from it, identically on every node. Devices read ``device_split``; the server
    reads ``central_test``, ``local_train_sizes`` (the simulated fleet's compute and the raw
    baseline) and ``partition_sizes`` (``summary.json``).
    """

    @property
    def info(self) -> DatasetInfo:
        """The dataset's description and shape."""
        ...

    @property
    def natural_keys(self) -> tuple[str, ...]:
        """Every device's natural key, in device order."""
        ...

    def device_split(self, device_id: int) -> tuple[LabeledData, LabeledData]:
        """The device's local ``(train, test)`` data."""
        ...

    @property
    def central_test(self) -> LabeledData:
        """The central held-out split the server evaluates on."""
        ...

    @property
    def local_train_sizes(self) -> tuple[int, ...]:
        """Each device's number of local training samples, in device order."""
        ...

    @property
    def partition_sizes(self) -> tuple[int, ...]:
        """Each device's number of samples in its partition (before its local split)."""
        ...
