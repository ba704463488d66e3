"""A disk cache for datasets that are costly to build, shared by every process of a machine.

Every process of a simulation loads the run's dataset: the server and each Ray worker. For a
generated fleet of 10,000 vehicles that is ~8 s of CPU per process, paid again by every worker
and every run. With ``scenario.dataset.cache: true`` the first process to load a dataset writes
its arrays to ``$FL_IOT_CACHE_DIR`` (default ``~/.cache/fl-iot/datasets``), one ``.npy`` file per
array, and every later load maps those files read-only (``numpy.load(mmap_mode="r")``): no
rebuild, and the processes of a machine share one copy of the data in the page cache instead of
holding one each.

An entry is keyed by everything that decides the data: the dataset's name, root, seed and
options, the loader's source file and numpy's version; a change to any of them builds a new
entry (old ones stay until deleted: the directory can be removed at any time). Entries are
written to a temporary directory and renamed into place, so concurrent processes never read a
half-written one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clients.data import LabeledData
from fl_iot.data.base import SourceDataset

CACHE_DIR_ENV = "FL_IOT_CACHE_DIR"
_ARRAYS = ("train.x", "train.y", "test.x", "test.y", "groups", "segments", "spans")


def cache_dir() -> Path:
    """Where cached datasets live: ``$FL_IOT_CACHE_DIR``, else ``~/.cache/fl-iot/datasets``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "fl-iot" / "datasets"


def cache_key(
    name: str,
    root: str | Path | None,
    seed: int,
    options: dict[str, Any],
    loader: Callable[..., Any],
) -> str:
    """The digest that names a dataset's cache entry."""
    source = inspect.getsourcefile(loader)
    code = hashlib.sha256(Path(source).read_bytes()).hexdigest() if source else loader.__qualname__
    described = json.dumps(
        {
            "name": name,
            "root": str(root) if root else None,
            "seed": seed,
            "options": options,
            "loader": code,
            "numpy": np.__version__,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(described.encode()).hexdigest()[:32]


def cached_source(key: str, load: Callable[[], SourceDataset]) -> SourceDataset:
    """The dataset of cache entry ``key``, built with ``load`` and stored if there is none."""
    entry = cache_dir() / key
    if not (entry / "meta.pkl").is_file():
        _store(entry, load())
    return _read(entry)


def _store(entry: Path, source: SourceDataset) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train.x": source.train.x,
        "train.y": source.train.y,
        "test.x": source.test.x,
        "test.y": source.test.y,
        "groups": source.groups,
        "segments": source.segments,
        "spans": source.spans,
    }
    temporary = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}-"))
    try:
        for name, array in arrays.items():
            if array is not None:
                np.save(temporary / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        empty = LabeledData(np.empty((0,)), np.empty((0,), dtype=np.int64))
        skeleton = dataclasses.replace(
            source, train=empty, test=empty, groups=np.empty((0,)), segments=None, spans=None
        )
        with open(temporary / "meta.pkl", "wb") as file:
            pickle.dump(skeleton, file)
        try:
            os.rename(temporary, entry)
        except OSError:  # another process stored the same entry first
            if not (entry / "meta.pkl").is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _read(entry: Path) -> SourceDataset:
    with open(entry / "meta.pkl", "rb") as file:
        skeleton: SourceDataset = pickle.load(file)
    arrays = {
        name: np.load(path, mmap_mode="r", allow_pickle=False)
        if (path := entry / f"{name}.npy").is_file()
        else None
        for name in _ARRAYS
    }
    return dataclasses.replace(
        skeleton,
        train=LabeledData(arrays["train.x"], arrays["train.y"]),  # type: ignore[arg-type]
        test=LabeledData(arrays["test.x"], arrays["test.y"]),  # type: ignore[arg-type]
        groups=arrays["groups"],  # type: ignore[arg-type]
        segments=arrays["segments"],
        spans=arrays["spans"],
    )
