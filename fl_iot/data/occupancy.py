"""UCI Occupancy Detection: is the office room occupied, from one minute of its sensors.

Luis M. Candanedo, Véronique Feldheim. "Accurate occupancy detection of an office room from
light, temperature, humidity and CO2 measurements using statistical learning models." Energy and
Buildings 112 (2016) 28-39; UCI Machine Learning Repository, "Occupancy Detection". Licence:
Creative Commons Attribution 4.0 (CC BY 4.0).

One office room, measured once a minute in February 2015; the label (1 = occupied) comes from
time-stamped pictures. The files' header names 7 columns while every row has 8 fields (a quoted
row id first), so the id becomes the index. Design decisions:

Features
    The 5 sensors (temperature, relative humidity, light, CO2, humidity ratio), standardised with
    the training file's mean and standard deviation, and, with ``time_features`` (default), the
    time of day as a point on the unit circle (sin, cos of the minute of the day, so 23:59 is next
    to 00:00) and a weekend flag, as the authors' "number of seconds from midnight" and "week
    status". A sensor hub knows its clock, and occupancy of an office follows the working week.
    One sample is one minute, shaped ``(8,)`` (``(5,)`` without time features).
Devices
    The data come from a single room, so there is no population of hubs to split by. The natural
    key is the calendar day of the training file: each device is one day of the room's sensor hub
    (7 devices, 2015-02-04 to 2015-02-10; the first and last are partial days, and the two
    weekend days hold no occupied minute, a realistic label skew).
Central test split
    The two official test files, ``datatest.txt`` (2015-02-02 to 02-04, before the training
    period) and ``datatest2.txt`` (02-11 to 02-18, after it), pooled: 12,417 minutes that share no
    timestamp with the training minutes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from clients.data import LabeledData
from fl_iot.data.base import DATASETS, RawData, SourceDataset
from fl_iot.data.paths import find_dataset_dir
from fl_iot.errors import ConfigError

SENSORS = ("Temperature", "Humidity", "Light", "CO2", "HumidityRatio")
TIME_FEATURES = ("time_of_day_sin", "time_of_day_cos", "weekend")
CLASS_NAMES = ("empty", "occupied")
TRAIN_FILE = "datatraining.txt"
TEST_FILES = ("datatest.txt", "datatest2.txt")
_HOW_TO_GET = (
    "Download the three .txt files of https://archive.ics.uci.edu/dataset/357/occupancy+detection "
    "into <root>/occupancy."
)


@lru_cache(maxsize=8)
def read_minutes(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one occupancy file (cached in-process).

    Returns
    -------
    sensors : np.ndarray
        ``float64`` ``(n, 5)``, the :data:`SENSORS` columns in their units.
    timestamps : np.ndarray
        ``datetime64[s]`` of each minute.
    occupied : np.ndarray
        ``int64`` label of each minute.
    """
    import pandas as pd

    # The header has 7 names and the rows 8 fields: pandas takes the row id as the index.
    table = pd.read_csv(path)
    sensors = table[list(SENSORS)].to_numpy(dtype=np.float64)
    timestamps = pd.to_datetime(table["date"]).to_numpy(dtype="datetime64[s]")
    return sensors, timestamps, table["Occupancy"].to_numpy(dtype=np.int64)


def clock_features(timestamps: np.ndarray) -> np.ndarray:
    """Return the time of day on the unit circle and a weekend flag, ``(n, 3)`` float64."""
    days = timestamps.astype("datetime64[D]")
    minute = (timestamps - days).astype("timedelta64[s]").astype(np.float64) / 60.0
    angle = 2.0 * np.pi * minute / (24 * 60)
    # 1970-01-01 was a Thursday: day number + 3 counts from a Monday.
    weekday = (days.astype(np.int64) + 3) % 7
    return np.stack([np.sin(angle), np.cos(angle), (weekday >= 5).astype(np.float64)], axis=1)


@DATASETS.decorator("occupancy")
def load_occupancy(
    root: Path | None = None,
    seed: int = 0,
    time_features: bool = True,
) -> SourceDataset:
    """Load UCI Occupancy minutes, one device per calendar day of the training file.

    Parameters
    ----------
    root : Path or None
        Data root holding ``occupancy/`` with the three ``.txt`` files.
    seed : int
        Unused: the split is the official one.
    time_features : bool
        Append the time of day (sin, cos) and a weekend flag to the 5 sensors.

    Raises
    ------
    ConfigError
        If ``time_features`` is not a boolean.
    DatasetNotFoundError
        If the files are not found.
    """
    del seed  # the official split is deterministic
    if not isinstance(time_features, bool):
        raise ConfigError(f"time_features must be true or false, got {time_features!r}")
    directory = find_dataset_dir(
        "occupancy", "occupancy", root, [TRAIN_FILE, *TEST_FILES], _HOW_TO_GET
    )
    train_sensors, train_time, train_y = read_minutes(directory / TRAIN_FILE)
    tests = [read_minutes(directory / name) for name in TEST_FILES]
    mean, std = train_sensors.mean(axis=0), train_sensors.std(axis=0)

    def _features(sensors: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        columns = [(sensors - mean) / std]
        if time_features:
            columns.append(clock_features(timestamps))
        return np.concatenate(columns, axis=1).astype(np.float32)

    test_x = np.concatenate([_features(s, t) for s, t, _ in tests])
    test_y = np.concatenate([y for _, _, y in tests])
    groups = np.asarray([f"day-{d}" for d in train_time.astype("datetime64[D]")])
    return SourceDataset(
        name="occupancy",
        train=LabeledData(_features(train_sensors, train_time), train_y),
        groups=groups,
        # Device-local splits hold out whole hours: neighbouring minutes are near-copies.
        segments=train_time.astype("datetime64[h]").astype(np.int64),
        test=LabeledData(test_x, test_y),
        class_names=CLASS_NAMES,
        description="UCI Occupancy, one office room's sensor minutes, one device per day",
        raw=RawData(
            # The five sensors once a minute, each a 16-bit reading (EST: temperature to 0.01 °C,
            # light and CO2 as integers, fit 16 bits); the time features are computed, not sent.
            bytes_per_example=len(SENSORS) * 2,
            bytes_per_second=len(SENSORS) * 2 / 60,
            basis=f"{len(SENSORS)} sensors, 16 bits each (EST), once a minute",
        ),
        metadata={
            "features": list(SENSORS) + (list(TIME_FEATURES) if time_features else []),
            "train_period": (str(train_time.min()), str(train_time.max())),
            "test_periods": [(str(t.min()), str(t.max())) for _, t, _ in tests],
        },
    )
