"""The machine's dataset cache: built once, then mapped read-only by every process."""

from __future__ import annotations

import numpy as np
import pytest

from fl_iot.data import load_source
from fl_iot.data.cache import CACHE_DIR_ENV, cache_key
from fl_iot.data.vehicle import load_vehicle

OPTIONS = {"num_vehicles": 6, "samples_per_vehicle": 12, "window": 16}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_cached_dataset_is_the_dataset_and_is_mapped_from_disk_the_second_time(cache):
    built = load_source("vehicle", None, 3, OPTIONS)
    first = load_source("vehicle", None, 3, OPTIONS, cache=True)
    (entry,) = cache.iterdir()
    assert {p.name for p in entry.iterdir()} >= {"meta.pkl", "train.x.npy", "groups.npy"}
    second = load_source("vehicle", None, 3, OPTIONS, cache=True)
    for loaded in (first, second):
        assert isinstance(loaded.train.x, np.memmap)
        np.testing.assert_array_equal(loaded.train.x, built.train.x)
        np.testing.assert_array_equal(loaded.test.y, built.test.y)
        np.testing.assert_array_equal(loaded.groups, built.groups)
        assert loaded.class_names == built.class_names and loaded.synthetic
        assert loaded.raw == built.raw
    with pytest.raises(ValueError, match="read-only"):
        second.train.x[0] = 0.0


def test_another_seed_option_or_loader_is_another_entry(cache):
    key = cache_key("vehicle", None, 3, OPTIONS, load_vehicle)
    assert key == cache_key("vehicle", None, 3, dict(OPTIONS), load_vehicle)
    assert key != cache_key("vehicle", None, 4, OPTIONS, load_vehicle)
    assert key != cache_key("vehicle", None, 3, {**OPTIONS, "window": 17}, load_vehicle)
    assert key != cache_key("vehicle", None, 3, OPTIONS, load_source)
    load_source("vehicle", None, 3, OPTIONS, cache=True)
    load_source("vehicle", None, 4, OPTIONS, cache=True)
    assert len(list(cache.iterdir())) == 2


def test_an_entry_another_process_stored_first_is_kept(cache, monkeypatch):
    """Two processes building the same entry at once: the second rename finds it in place."""
    import fl_iot.data.cache as module

    stored = module._store
    calls = []

    def store_twice(entry, source):
        calls.append(entry)
        stored(entry, source)
        stored(entry, source)  # the slower process's rename fails on the existing entry

    monkeypatch.setattr(module, "_store", store_twice)
    loaded = load_source("vehicle", None, 3, OPTIONS, cache=True)
    assert len(calls) == 1 and len(loaded.train) > 0
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []
