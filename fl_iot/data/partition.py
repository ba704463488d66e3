"""Split a dataset's training samples among devices, with flwr-datasets partitioners.

Three schemes are offered:

``natural``
    One device per natural key (patient, engine unit, subject, vehicle): the realistic non-IID
    split. With fewer devices than keys, a seeded choice of keys is used. (Grouped in numpy: the
    same split as flwr-datasets' ``NaturalIdPartitioner``, without its per-device dataset scans.)
``iid``
    Samples shuffled and dealt evenly (``IidPartitioner``).
``dirichlet``
    Label skew: each class is split among the devices in proportions drawn from Dirichlet(alpha),
    and every device holds at least ``min_partition_size`` samples (see :func:`dirichlet_split`).

flwr-datasets partitions Hugging Face ``datasets.Dataset`` objects; the samples themselves stay in
numpy, and only an index column with the label and key goes through the ``iid`` partitioner.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fl_iot.errors import ConfigError

PARTITION_SCHEMES = ("natural", "iid", "dirichlet")

DIRICHLET_DRAWS = 11
"""Dirichlet draws before a short device is topped up: flwr-datasets' first draw and 10 retries."""

log = logging.getLogger(__name__)


def partition_indices(
    labels: np.ndarray,
    groups: np.ndarray,
    scheme: str,
    num_devices: int | None,
    seed: int,
    dirichlet_alpha: float = 0.5,
    min_partition_size: int = 2,
) -> list[np.ndarray]:
    """Return, for each device, the indices of the training samples it holds.

    Parameters
    ----------
    labels, groups : np.ndarray
        Class label and natural device key of every training sample.
    scheme : {"natural", "iid", "dirichlet"}
        How to split.
    num_devices : int or None
        Number of devices; ``None`` means one per natural key.
    seed : int
        Seed for every random choice.
    dirichlet_alpha : float
        Concentration of the Dirichlet prior (smaller is more skewed).
    min_partition_size : int
        Fewest samples a device may hold under ``dirichlet``.

    Raises
    ------
    ConfigError
        For an unknown scheme, or a device count the data cannot serve.
    """
    if scheme not in PARTITION_SCHEMES:
        raise ConfigError(
            f"unknown partition scheme {scheme!r}; valid choices: {', '.join(PARTITION_SCHEMES)}"
        )
    if num_devices is not None and num_devices < 1:
        raise ConfigError(f"num_devices must be at least 1, got {num_devices}")
    if scheme == "natural":
        return _natural(groups, num_devices, seed)
    devices = num_devices if num_devices is not None else len(np.unique(groups))
    if devices > len(labels):
        raise ConfigError(
            f"num_devices={devices} exceeds the {len(labels)} training samples of the dataset"
        )
    if scheme == "dirichlet":
        return dirichlet_split(labels, devices, dirichlet_alpha, min_partition_size, seed)
    from flwr_datasets.partitioner import IidPartitioner

    partitioner: Any = IidPartitioner(num_partitions=devices)
    partitioner.dataset = _index_table(labels, groups).shuffle(seed=seed)
    return [
        np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64) for i in range(devices)
    ]


def dirichlet_split(
    labels: np.ndarray, devices: int, alpha: float, min_partition_size: int, seed: int
) -> list[np.ndarray]:
    """Split the samples among ``devices`` with Dirichlet(``alpha``) label skew.

    Each class's samples are cut among the devices in proportions drawn from a symmetric
    Dirichlet(``alpha``), and each device's indices are shuffled: the draws of flwr-datasets'
    ``DirichletPartitioner`` (without self-balancing), which this reproduces index for index
    whenever it succeeds. Like it, a draw that leaves a device with fewer than
    ``min_partition_size`` samples is redrawn, up to :data:`DIRICHLET_DRAWS` draws. Where it then
    gives up ("The max number of attempts (10) was reached"), this tops up the last draw instead:
    with a strong skew (alpha 0.1 over 47 devices and 5 classes) each class lands on a handful of
    devices, so most draws leave some device nearly empty, and more draws would not help a larger
    fleet. Each short device, in id order, takes the samples it lacks from the device holding the
    most, from that device's most common class, so the skew survives; the move is logged.

    Parameters
    ----------
    labels : np.ndarray
        Class label of every sample.
    devices : int
        Number of partitions.
    alpha : float
        Concentration of the Dirichlet prior (smaller is more skewed); must be positive.
    min_partition_size : int
        Fewest samples a device may hold.
    seed : int
        Seed of the draws and shuffles.

    Raises
    ------
    ConfigError
        For a non-positive ``alpha``, or fewer than ``devices * min_partition_size`` samples.
    """
    if not alpha > 0:
        raise ConfigError(f"dirichlet_alpha must be positive, got {alpha}")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) < devices * min_partition_size:
        raise ConfigError(
            f"dataset.partition=dirichlet gives every device at least {min_partition_size} "
            f"samples, but {len(labels)} training samples cannot serve num_devices={devices}; "
            f"choose num_devices <= {len(labels) // min_partition_size}"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    concentration = np.full(devices, float(alpha))
    for _ in range(DIRICHLET_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(devices)]
        for indices in by_class:
            cuts = (np.cumsum(rng.dirichlet(concentration)) * len(indices)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(indices, cuts), strict=True):
                part.append(chunk)
        partitions = [np.concatenate(part).astype(np.int64) for part in parts]
        if min(len(p) for p in partitions) >= min_partition_size:
            break
    else:
        partitions = _top_up(partitions, labels, min_partition_size, alpha)
    for partition in partitions:
        rng.shuffle(partition)
    return partitions


def _top_up(
    partitions: list[np.ndarray], labels: np.ndarray, min_size: int, alpha: float
) -> list[np.ndarray]:
    short = [d for d, p in enumerate(partitions) if len(p) < min_size]
    moved = 0
    for device in short:
        while (need := min_size - len(partitions[device])) > 0:
            donor = int(np.argmax([len(p) for p in partitions]))  # holds > min_size: see caller
            held = labels[partitions[donor]]
            values, counts = np.unique(held, return_counts=True)
            of_class = np.flatnonzero(held == values[np.argmax(counts)])
            take = of_class[len(of_class) - min(need, len(of_class), len(held) - min_size) :]
            partitions[device] = np.concatenate([partitions[device], partitions[donor][take]])
            partitions[donor] = np.delete(partitions[donor], take)
            moved += len(take)
    log.info(
        "dirichlet partition: %d of %d devices held fewer than %d samples after %d draws at "
        "alpha=%g; moved %d samples to them from the largest devices",
        len(short),
        len(partitions),
        min_size,
        DIRICHLET_DRAWS,
        alpha,
        moved,
    )
    return partitions


def _index_table(labels: np.ndarray, groups: np.ndarray) -> Any:
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "index": np.arange(len(labels), dtype=np.int64),
            "label": np.asarray(labels, dtype=np.int64),
            "group": np.asarray(groups).astype(str),
        }
    )


def _natural(groups: np.ndarray, num_devices: int | None, seed: int) -> list[np.ndarray]:
    # flwr-datasets' NaturalIdPartitioner gives the same partitions, but it needs the samples as
    # a Hugging Face Dataset and filters it once per device: 11 s for 47 devices here, paid by
    # every Ray worker. Grouping by key in numpy takes milliseconds.
    keys, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    if num_devices is not None and num_devices > len(keys):
        raise ConfigError(
            f"num_devices={num_devices} but the natural partition has only {len(keys)} devices "
            f"(one per natural key); choose num_devices <= {len(keys)} or "
            "dataset.partition=iid|dirichlet"
        )
    chosen = np.arange(len(keys))  # devices in key order, so ids never depend on hashing
    if num_devices is not None and num_devices < len(keys):
        chosen = np.sort(np.random.default_rng(seed).choice(len(keys), num_devices, replace=False))
    return [np.flatnonzero(inverse == k).astype(np.int64) for k in chosen]


def natural_keys(groups: np.ndarray, partitions: list[np.ndarray]) -> list[str]:
    """Return the natural key of each partition (or ``"mixed"`` when it spans several)."""
    keys = []
    for index in partitions:
        unique = np.unique(np.asarray(groups)[index].astype(str))
        keys.append(str(unique[0]) if len(unique) == 1 else "mixed")
    return keys


def split_device_data(
    num_samples: int,
    test_fraction: float,
    seed: int,
    segments: np.ndarray | None = None,
    spans: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split one device's samples into local train and local test positions.

    Without ``segments`` the split is a seeded random draw. With them, whole segments (see
    :class:`fl_iot.data.base.SourceDataset`) go to the test side, in a seeded order, until it
    holds ``test_fraction`` of the samples, and training samples whose ``spans`` overlap a test
    sample's are dropped. At least one sample (one segment) stays for training; a device with a
    single sample or segment has no local test set.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"device_test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    target = round(num_samples * test_fraction)
    if segments is None:
        order = rng.permutation(num_samples)
        n_test = min(target, num_samples - 1)
        return np.sort(order[n_test:]), np.sort(order[:n_test])
    keys, inverse = np.unique(np.asarray(segments), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(keys))
    chosen: list[int] = []
    held = 0
    for key in rng.permutation(len(keys))[: len(keys) - 1]:
        if held >= target:
            break
        chosen.append(int(key))
        held += int(counts[key])
    is_test = np.isin(inverse, chosen)
    keep = ~is_test
    if spans is not None and is_test.any():
        spans = np.asarray(spans)
        test_spans = spans[is_test]
        overlaps = (spans[:, None, 0] <= test_spans[None, :, 1]) & (
            test_spans[None, :, 0] <= spans[:, None, 1]
        )
        keep &= ~overlaps.any(axis=1)
    return np.flatnonzero(keep), np.flatnonzero(is_test)
