"""Synthetic vehicle-fleet generator: shapes, sizes, determinism, fault signatures, errors."""

from __future__ import annotations

import numpy as np
import pytest

from fl_iot.data import load_federated_data
from fl_iot.data.vehicle import CHANNELS, CLASS_NAMES, load_vehicle
from fl_iot.errors import ConfigError


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1)}


def test_default_fleet_is_labelled_synthetic_with_uneven_vehicles() -> None:
    # Execute
    data = load_vehicle(seed=0)

    # Assert
    counts = np.asarray(data.metadata["windows_per_vehicle"])
    assert data.synthetic and "SYNTHETIC" in data.description
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.int64
    assert data.input_shape == (len(CHANNELS), 64) == (6, 64)
    assert data.class_names == CLASS_NAMES
    assert len(np.unique(data.groups)) == 40 == len(counts)
    assert len(data.train) + len(data.test) == counts.sum()
    assert counts.min() >= 10 and counts.max() > 5 * counts.min()
    _, per_vehicle = np.unique(data.groups, return_counts=True)
    np.testing.assert_array_equal(per_vehicle, counts - np.round(0.2 * counts))


def test_every_class_is_present_and_none_dominates() -> None:
    # Execute
    data = load_vehicle(seed=0)

    # Assert
    for labels in (data.train.y, data.test.y):
        share = np.bincount(labels, minlength=4) / len(labels)
        assert share.min() > 0.05 and share.max() < 0.75


def test_faults_leave_their_signature_in_the_standardised_channels() -> None:
    # Execute
    data = load_vehicle(seed=1, num_vehicles=20)
    x, y = data.train.x, data.train.y
    temperature, voltage = CHANNELS.index("coolant_temp"), CHANNELS.index("battery_voltage")

    # Assert
    assert x[y == 1, temperature].mean() > x[y == 0, temperature].mean() + 0.5
    assert x[y == 2, voltage].mean() < x[y == 0, voltage].mean() - 0.5


def test_channels_are_standardised_with_training_statistics() -> None:
    # Execute
    data = load_vehicle(seed=0)

    # Assert
    np.testing.assert_allclose(data.train.x.mean(axis=(0, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(data.train.x.std(axis=(0, 2)), 1.0, atol=1e-3)


def test_equal_counts_without_size_spread() -> None:
    # Execute
    data = load_vehicle(num_vehicles=5, samples_per_vehicle=30, size_sigma=0.0, window=32)

    # Assert
    assert data.metadata["windows_per_vehicle"] == [30] * 5
    assert (len(data.train), len(data.test)) == (5 * 24, 5 * 6)
    assert data.input_shape == (6, 32)


def test_central_test_split_is_not_in_train() -> None:
    # Execute
    data = load_vehicle(seed=0)

    # Assert
    assert not _rows(data.train.x) & _rows(data.test.x)


def test_same_seed_same_fleet_other_seed_other_fleet() -> None:
    # Execute
    first, again, other = load_vehicle(seed=7), load_vehicle(seed=7), load_vehicle(seed=8)

    # Assert
    np.testing.assert_array_equal(first.train.x, again.train.x)
    np.testing.assert_array_equal(first.test.y, again.test.y)
    np.testing.assert_array_equal(first.groups, again.groups)
    assert first.metadata["windows_per_vehicle"] != other.metadata["windows_per_vehicle"]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"num_vehicles": 0}, ["num_vehicles", ">= 1", "0"]),
        ({"samples_per_vehicle": 2.5}, ["samples_per_vehicle", ">= 10", "2.5"]),
        ({"noise": -1.0}, ["noise", ">= 0", "-1.0"]),
        ({"test_fraction": 1.0}, ["test_fraction", "(0, 1)", "1.0"]),
    ],
)
def test_bad_options_name_the_value_and_the_choices(
    options: dict[str, object], named: list[str]
) -> None:
    # Execute
    with pytest.raises(ConfigError) as error:
        load_vehicle(**options)  # type: ignore[arg-type]

    # Assert
    for text in named:
        assert text in str(error.value)


def test_partitions_one_device_per_vehicle_end_to_end() -> None:
    # Execute
    federated = load_federated_data(
        {"name": "vehicle", "partition": "natural", "options": {"num_vehicles": 12}}, None, 0
    )

    # Assert
    assert federated.num_devices == 12
    assert list(federated.natural_keys) == [f"vehicle-{v:03d}" for v in range(12)]
    assert sum(len(p) for p in federated.partitions) == len(federated.source.train)
