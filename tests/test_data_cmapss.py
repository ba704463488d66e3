"""C-MAPSS loader on the real NASA files: windows, labels from RUL, devices, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fl_iot.data import load_federated_data
from fl_iot.data.cmapss import DROPPED_SENSORS, SENSORS, load_cmapss, operating_condition
from fl_iot.errors import ConfigError, DatasetNotFoundError

# FD001 facts (SOURCE.md): 100 train units, 20631 train rows; 100 test units, 13096 test rows.
FD001_TRAIN_ROWS, FD001_TEST_ROWS, FD001_UNITS = 20631, 13096, 100


def _read(root: Path, name: str) -> np.ndarray:
    with gzip.open(root / "cmapss" / name, "rt") as handle:
        return np.asarray([[float(v) for v in line.split()] for line in handle])


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1)}


def test_fd001_windows_units_and_labels(shared_data_root: Path) -> None:
    # Execute
    data = load_cmapss(shared_data_root, subset="FD001", horizon=30, window=30)

    # Assert: one window per cycle from the 30th on; 31 positive windows (RUL 0..30) per unit.
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.int64
    assert data.input_shape == (len(SENSORS), 30) == (14, 30)
    assert len(data.train) == FD001_TRAIN_ROWS - FD001_UNITS * 29
    assert len(data.test) == FD001_TEST_ROWS - FD001_UNITS * 29
    assert np.bincount(data.train.y).tolist() == [len(data.train) - 31 * FD001_UNITS, 3100]
    assert len(np.unique(data.groups)) == FD001_UNITS
    assert data.class_names == ("healthy", "fails-within-horizon")


def test_test_labels_follow_the_official_rul(shared_data_root: Path) -> None:
    # Prepare: RUL at cycle t of a test unit is RUL_final + last_cycle - t.
    final_rul = _read(shared_data_root, "RUL_FD001.txt.gz")[:, 0]
    test = _read(shared_data_root, "test_FD001.txt.gz")
    lengths = np.bincount(test[:, 0].astype(int))[1:]
    positives_per_unit = np.clip(30 - final_rul + 1, 0, lengths - 29)

    # Execute
    last = load_cmapss(shared_data_root, test_windows="last")
    every = load_cmapss(shared_data_root, test_windows="all")

    # Assert
    np.testing.assert_array_equal(last.test.y, (final_rul <= 30).astype(np.int64))
    assert len(last.test) == FD001_UNITS
    assert every.test.y.sum() == positives_per_unit.sum()


def test_dropped_sensors_are_constant_within_the_condition(shared_data_root: Path) -> None:
    # Prepare
    train = _read(shared_data_root, "train_FD001.txt.gz")

    # Execute
    stds = train[:, [4 + s for s in DROPPED_SENSORS]].std(axis=0)

    # Assert
    assert set(SENSORS).isdisjoint(DROPPED_SENSORS) and len(SENSORS) + len(DROPPED_SENSORS) == 21
    assert np.all(stds < 0.002)


def test_fd002_is_standardised_per_operating_condition(shared_data_root: Path) -> None:
    # Execute
    data = load_cmapss(shared_data_root, subset="FD002", device_key="condition")

    # Assert: six devices, one per condition, each with its sensors centred on its own mean.
    assert sorted(np.unique(data.groups)) == [f"condition-{c}" for c in range(6)]
    last_cycle = data.train.x[:, :, -1]
    for group in np.unique(data.groups):
        np.testing.assert_allclose(last_cycle[data.groups == group].mean(axis=0), 0.0, atol=0.3)


def test_operating_condition_maps_set_points() -> None:
    # Prepare
    settings = np.asarray([[42.0049, 0.8405, 100.0], [-0.0007, 0.0003, 100.0], [25.0, 0.62, 60.0]])

    # Execute / Assert
    np.testing.assert_array_equal(operating_condition(settings), [5, 0, 3])


def test_central_test_split_is_not_in_train(shared_data_root: Path) -> None:
    # Execute
    data = load_cmapss(shared_data_root)

    # Assert
    assert not _rows(data.train.x) & _rows(data.test.x)


def test_loading_is_deterministic(shared_data_root: Path) -> None:
    # Execute
    first, second = load_cmapss(shared_data_root, seed=0), load_cmapss(shared_data_root, seed=1)

    # Assert: the official split and the windows do not depend on the seed.
    np.testing.assert_array_equal(first.train.x, second.train.x)
    np.testing.assert_array_equal(first.test.y, second.test.y)
    np.testing.assert_array_equal(first.groups, second.groups)


def test_missing_dataset_names_where_it_looked(tmp_path: Path) -> None:
    # Execute
    with pytest.raises(DatasetNotFoundError) as error:
        load_cmapss(tmp_path, subset="FD003")

    # Assert
    assert str(tmp_path / "cmapss") in str(error.value)
    assert "train_FD003.txt.gz" in str(error.value)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"subset": "FD005"}, ["'FD005'", "FD001, FD002, FD003, FD004"]),
        ({"device_key": "engine"}, ["'engine'", "unit, condition"]),
        ({"device_key": "condition"}, ["FD001", "FD002, FD004"]),
        ({"test_windows": "first"}, ["'first'", "all, last"]),
        ({"window": 0}, ["window", "0"]),
    ],
)
def test_bad_options_name_the_value_and_the_choices(
    shared_data_root: Path, options: dict[str, object], named: list[str]
) -> None:
    # Execute
    with pytest.raises(ConfigError) as error:
        load_cmapss(shared_data_root, **options)  # type: ignore[arg-type]

    # Assert
    for text in named:
        assert text in str(error.value)


def test_partitions_one_device_per_engine_end_to_end(shared_data_root: Path) -> None:
    # Execute
    federated = load_federated_data(
        {"name": "cmapss", "root": str(shared_data_root), "partition": "natural"}, None, 0
    )

    # Assert
    assert federated.num_devices == FD001_UNITS
    assert federated.natural_keys[0] == "unit-001"
    assert sum(len(p) for p in federated.partitions) == len(federated.source.train)


def test_device_local_split_shares_no_cycle_between_train_and_test(shared_data_root):
    from fl_iot.data import load_federated_data
    from fl_iot.data.partition import split_device_data

    data = load_federated_data(
        {"name": "cmapss", "root": str(shared_data_root), "options": {"stride": 5}}, 10, 0
    )
    spans, segments = data.source.spans, data.source.segments
    assert spans is not None and segments is not None
    for device in range(data.num_devices):
        index = data.partitions[device]
        train, test = split_device_data(
            len(index), 0.2, device, segments=segments[index], spans=spans[index]
        )
        assert len(test) > 0
        test_cycles = {c for s, e in spans[index][test] for c in range(s, e + 1)}
        assert all(not test_cycles.intersection(range(s, e + 1)) for s, e in spans[index][train])
