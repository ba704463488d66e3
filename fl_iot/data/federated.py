"""A dataset split among devices: what the ServerApp and every ClientApp load.

Loading is cached per process: a Ray actor that serves many devices reads the files once.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from clients.data import LabeledData
from fl_iot.data.base import DATASETS, SourceDataset
from fl_iot.data.cache import cache_key, cached_source
from fl_iot.data.partition import natural_keys, partition_indices, split_device_data
from fl_iot.data.run_data import DatasetInfo
from fl_iot.errors import ConfigError


@dataclass(frozen=True)
class FederatedData:
    """A source dataset, its partition among devices and each device's local split.

    The whole dataset, as every process of a simulation loads it; a
    :class:`~fl_iot.data.run_data.RunData`.
    """

    source: SourceDataset
    partitions: tuple[np.ndarray, ...]
    natural_keys: tuple[str, ...]
    device_test_fraction: float
    seed: int

    @property
    def num_devices(self) -> int:
        """Number of devices (partitions)."""
        return len(self.partitions)

    def device_split(self, device_id: int) -> tuple[LabeledData, LabeledData]:
        """Return the device's local ``(train, test)`` data."""
        index = self.partitions[device_id]
        segments, spans = self.source.segments, self.source.spans
        local_train, local_test = split_device_data(
            len(index),
            self.device_test_fraction,
            seed=self.seed * 100_003 + device_id,
            segments=None if segments is None else segments[index],
            spans=None if spans is None else spans[index],
        )
        return self.source.train.subset(index[local_train]), self.source.train.subset(
            index[local_test]
        )

    @cached_property
    def info(self) -> DatasetInfo:
        """The dataset's description and shape."""
        return DatasetInfo.of(self.source)

    @property
    def central_test(self) -> LabeledData:
        """The central held-out split the server evaluates on."""
        return self.source.test

    @cached_property
    def local_train_sizes(self) -> tuple[int, ...]:
        """Each device's number of local training samples, in device order."""
        return tuple(len(self.device_split(d)[0]) for d in range(self.num_devices))

    @property
    def partition_sizes(self) -> tuple[int, ...]:
        """Each device's number of samples in its partition (before its local split)."""
        return tuple(len(p) for p in self.partitions)


def load_federated_data(
    dataset: dict[str, Any], num_devices: int | None, seed: int
) -> FederatedData:
    """Load and partition the dataset described by a scenario's ``dataset`` config.

    Parameters
    ----------
    dataset : dict
        ``name``, ``root``, ``partition``, ``dirichlet_alpha``, ``device_test_fraction``,
        ``options`` (as in :class:`fl_iot.config.DatasetConfig`).
    num_devices : int or None
        Devices to split among; ``None`` gives one per natural key.
    seed : int
        Seed of the run.
    """
    # A JSON key makes the cache insensitive to dict ordering and DictConfig vs dict.
    return _load_cached(json.dumps(dataset, sort_keys=True, default=str), num_devices, seed)


@lru_cache(maxsize=4)
def _load_cached(dataset_json: str, num_devices: int | None, seed: int) -> FederatedData:
    dataset = json.loads(dataset_json)
    source = load_source(
        dataset["name"],
        dataset.get("root"),
        seed,
        dataset.get("options") or {},
        cache=bool(dataset.get("cache", False)),
    )
    partitions = partition_indices(
        source.train.y,
        source.groups,
        scheme=dataset.get("partition", "natural"),
        num_devices=num_devices,
        seed=seed,
        dirichlet_alpha=float(dataset.get("dirichlet_alpha", 0.5)),
    )
    return FederatedData(
        source=source,
        partitions=tuple(partitions),
        natural_keys=tuple(natural_keys(source.groups, partitions)),
        device_test_fraction=float(dataset.get("device_test_fraction", 0.2)),
        seed=seed,
    )


def load_source(
    name: str,
    root: str | Path | None,
    seed: int,
    options: dict[str, Any],
    cache: bool = False,
) -> SourceDataset:
    """Load a registered dataset by name (unknown names and options list the valid ones).

    With ``cache``, through the machine's dataset cache (:mod:`fl_iot.data.cache`).
    """
    loader = DATASETS.get(name)
    accepted = [
        p.name
        for p in inspect.signature(loader).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted) - {"root", "seed"})
    if unknown:
        valid = ", ".join(a for a in accepted if a not in ("root", "seed")) or "(none)"
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for dataset {name!r} "
            f"(scenario.dataset.options); valid options: {valid}"
        )

    def load() -> SourceDataset:
        return loader(root=Path(root) if root else None, seed=seed, **options)

    if not cache:
        return load()
    return cached_source(cache_key(name, root, seed, options, loader), load)
