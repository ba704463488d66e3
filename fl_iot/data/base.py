"""What every dataset loader returns: the pooled samples, their device keys and a test split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from clients.data import LabeledData
from clients.registry import Registry


@dataclass(frozen=True)
class RawData:
    """The sensor data behind a dataset's examples, at the sensors' native precision.

    What a device would upload to ship its data to a server instead of training on it: the
    raw baseline of the communication report (``summary.json``'s ``communication.raw_data``).

    Attributes
    ----------
    bytes_per_example : float
        Raw bytes each training example adds: the readings it covers that no earlier example
        of the device covered (overlapping windows count once), at native precision.
    bytes_per_second : float
        What one device's sensors produce per second while it runs (the stream).
    basis : str
        How both were derived: channels, rate and bits, and what is an estimate.
    """

    bytes_per_example: float
    bytes_per_second: float
    basis: str


@dataclass(frozen=True)
class SourceDataset:
    """What a loader returns: the pooled training samples and a central held-out split.

    Attributes
    ----------
    name : str
        Registry name of the dataset.
    train : LabeledData
        Every sample that devices may hold.
    groups : np.ndarray
        The natural device key of each training sample (patient, engine unit, subject, vehicle),
        shape ``(len(train),)``. The ``natural`` partition gives one device per distinct key.
    test : LabeledData
        The central held-out split the server evaluates on. No device holds these samples.
    class_names : tuple[str, ...]
        Name of each class index.
    synthetic : bool
        True when the data is generated rather than recorded.
    description : str
        One line saying what the samples are, shown in run summaries.
    segments : np.ndarray or None
        Optional block id of each training sample (a recording, an hour, a stretch of cycles):
        a device's local train/test split keeps each block whole, so that overlapping windows
        or neighbouring minutes do not land on both sides.
    spans : np.ndarray or None
        Optional ``(n, 2)`` first and last time index of each training sample's window; local
        training samples whose span overlaps a local test sample's are dropped (purged).
    raw : RawData or None
        The sensor data behind the examples at native precision (the raw-upload baseline).
    """

    name: str
    train: LabeledData
    groups: np.ndarray
    test: LabeledData
    class_names: tuple[str, ...]
    synthetic: bool = False
    description: str = ""
    metadata: dict[str, object] = field(default_factory=dict)
    segments: np.ndarray | None = None
    spans: np.ndarray | None = None
    raw: RawData | None = None

    def __post_init__(self) -> None:
        for name in ("groups", "segments", "spans"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.train):
                raise ValueError(
                    f"{name} has {len(values)} entries but train has {len(self.train)} samples"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return tuple(int(d) for d in self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


class DatasetLoader(Protocol):
    """A function that loads a dataset from a data root.

    Loaders take ``root`` (a directory or ``None`` for the dataset's default location), ``seed``
    (for any random split or generation) and dataset-specific keyword options from the
    scenario's ``dataset.options``. A missing dataset raises
    :class:`fl_iot.errors.DatasetNotFoundError`.
    """

    def __call__(self, root: Path | None, seed: int, **options: object) -> SourceDataset:
        """Load the dataset."""
        ...


DATASETS: Registry[Callable[..., SourceDataset]] = Registry("dataset", "fl_iot.datasets")
"""Dataset loaders by name; third-party packages add theirs through the ``fl_iot.datasets``
entry-point group."""
