"""UCI Occupancy loader on the real files: counts, features, day devices, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fl_iot.data import DATA_ROOT_ENV, load_federated_data
from fl_iot.data.occupancy import clock_features, load_occupancy
from fl_iot.errors import ConfigError, DatasetNotFoundError

# SOURCE.md: rows and Occupancy=1 / =0 of datatraining, datatest, datatest2.
TRAIN_ROWS, TEST_ROWS = 8143, 2665 + 9752
TRAIN_OCCUPIED, TEST_OCCUPIED = 1729, 972 + 2049
TRAIN_DAYS = [f"day-2015-02-{d:02d}" for d in range(4, 11)]


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


def test_row_counts_classes_and_days(shared_data_root: Path) -> None:
    # Execute
    data = load_occupancy(shared_data_root)

    # Assert
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.int64
    assert data.input_shape == (8,)
    assert (len(data.train), len(data.test)) == (TRAIN_ROWS, TEST_ROWS)
    assert np.bincount(data.train.y).tolist() == [TRAIN_ROWS - TRAIN_OCCUPIED, TRAIN_OCCUPIED]
    assert np.bincount(data.test.y).tolist() == [TEST_ROWS - TEST_OCCUPIED, TEST_OCCUPIED]
    assert sorted(np.unique(data.groups)) == TRAIN_DAYS
    weekend = np.isin(data.groups, ["day-2015-02-07", "day-2015-02-08"])
    assert data.train.y[weekend].sum() == 0  # nobody in the office at the weekend


def test_sensors_are_standardised_with_training_statistics(shared_data_root: Path) -> None:
    # Execute
    data = load_occupancy(shared_data_root, time_features=False)

    # Assert
    assert data.input_shape == (5,)
    np.testing.assert_allclose(data.train.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.train.x.std(axis=0), 1.0, atol=1e-4)
    assert np.abs(data.test.x.mean(axis=0)).max() > 0.01  # test statistics were not used


def test_clock_features_by_hand() -> None:
    # Prepare: Saturday 06:00 and Monday midnight.
    stamps = np.asarray(["2015-02-07T06:00:00", "2015-02-09T00:00:00"], dtype="datetime64[s]")

    # Execute
    features = clock_features(stamps)

    # Assert
    np.testing.assert_allclose(features, [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], atol=1e-12)


def test_central_test_split_is_not_in_train(shared_data_root: Path) -> None:
    # Execute
    data = load_occupancy(shared_data_root)

    # Assert: the test periods lie before and after the training period, and no row repeats.
    train: tuple[str, str] = data.metadata["train_period"]  # type: ignore[assignment]
    before, after = data.metadata["test_periods"]  # type: ignore[misc]
    assert before[1] < train[0] and train[1] < after[0]
    assert not _rows(data.train.x) & _rows(data.test.x)


def test_loading_is_deterministic(shared_data_root: Path) -> None:
    # Execute
    first, second = load_occupancy(shared_data_root, seed=0), load_occupancy(shared_data_root, 5)

    # Assert
    np.testing.assert_array_equal(first.train.x, second.train.x)
    np.testing.assert_array_equal(first.test.x, second.test.x)
    np.testing.assert_array_equal(first.groups, second.groups)


def test_missing_dataset_names_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))

    # Execute
    with pytest.raises(DatasetNotFoundError) as error:
        load_occupancy(None)

    # Assert
    assert str(tmp_path / "occupancy") in str(error.value)
    assert "datatraining.txt" in str(error.value)


def test_missing_data_root_says_how_to_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)

    # Execute
    with pytest.raises(DatasetNotFoundError) as error:
        load_occupancy(None)

    # Assert
    assert DATA_ROOT_ENV in str(error.value)


def test_bad_option_names_the_value_and_the_choices(shared_data_root: Path) -> None:
    # Execute
    with pytest.raises(ConfigError) as error:
        load_occupancy(shared_data_root, time_features="yes")  # type: ignore[arg-type]

    # Assert
    assert "'yes'" in str(error.value) and "true or false" in str(error.value)


def test_partitions_one_device_per_day_end_to_end(shared_data_root: Path) -> None:
    # Execute
    federated = load_federated_data(
        {"name": "occupancy", "root": str(shared_data_root), "partition": "natural"}, None, 0
    )

    # Assert
    assert list(federated.natural_keys) == TRAIN_DAYS
    assert [len(p) for p in federated.partitions] == [369, 1440, 1440, 1440, 1440, 1440, 574]
