"""NASA C-MAPSS turbofan engines: does an engine fail within ``horizon`` cycles of a window.

A. Saxena, K. Goebel, D. Simon, N. Eklund, "Damage Propagation Modeling for Aircraft Engine
Run-to-Failure Simulation", Proc. 1st Int. Conf. on Prognostics and Health Management (PHM08),
2008; A. Saxena and K. Goebel (2008), "Turbofan Engine Degradation Simulation Data Set", NASA Ames
Prognostics Data Repository. A US Government work in the public domain (cite the paper).

Each row of the data is one operating cycle of one engine: unit, cycle, three operational
settings and 21 sensors. Training trajectories run to failure; test trajectories stop earlier and
``RUL_FD00x`` gives each test unit's remaining useful life (RUL) after its last cycle. Design
decisions:

Target
    Binary: the engine fails within ``horizon`` (30) cycles of the window's last cycle, i.e.
    ``RUL <= horizon``. In training RUL at cycle t is ``last_cycle - t``; in the test split it is
    ``RUL_final + last_cycle - t``. Predictive maintenance acts on such an alarm, and it keeps the
    task a classification like every other fl-iot dataset.
Sensors
    The 14 informative sensors s2, s3, s4, s7, s8, s9, s11, s12, s13, s14, s15, s17, s20, s21.
    Within every operating condition s1, s5, s18 and s19 are constant, and s6, s10 and s16 take
    one or two values a few 1e-4 apart (quantisation, not degradation); those 7 are dropped.
    The operational settings are not features: they only name the operating condition.
Operating conditions
    FD001 and FD003 run at one condition; FD002 and FD004 at six (altitude, Mach, throttle
    resolver angle), each cycle at one of them. A cycle is assigned to the nearest of the six
    known set points.
Normalisation
    Each sensor is standardised with the mean and standard deviation of the training cycles of the
    same operating condition (the usual treatment of FD002/FD004: it removes the jumps between
    conditions and leaves the degradation trend). For FD001/FD003 that is global standardisation.
Windows
    Sliding windows of ``window`` (30) consecutive cycles, shaped ``(14, window)``, every
    ``stride`` cycles counted back from each trajectory's last cycle (so the last window always
    ends at the last cycle). A trajectory shorter than ``window`` is left-padded by repeating its
    first cycle, so every unit yields at least one window.
Devices
    ``device_key="unit"`` (default): one device per engine, the natural unit of a fleet whose
    engines each learn from their own history. ``device_key="condition"`` (FD002/FD004 only): one
    device per operating condition of the window's last cycle, e.g. a test cell or route.
Central test split
    The official test trajectories, labelled from ``RUL_FD00x``: every window
    (``test_windows="all"``) or only each unit's last one (``"last"``, the benchmark's protocol:
    one sample per unit).
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np

from clients.data import LabeledData
from fl_iot.data.base import DATASETS, RawData, SourceDataset
from fl_iot.data.paths import find_dataset_dir
from fl_iot.errors import ConfigError

SUBSETS = ("FD001", "FD002", "FD003", "FD004")
DEVICE_KEYS = ("unit", "condition")
TEST_WINDOWS = ("all", "last")
CLASS_NAMES = ("healthy", "fails-within-horizon")

CYCLE_SECONDS = 5400.0  # EST: one operating cycle is one flight, taken as 1.5 h
SENSORS: tuple[int, ...] = (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21)
"""The informative sensors (1-based numbers as in the dataset's readme)."""
DROPPED_SENSORS: tuple[int, ...] = (1, 5, 6, 10, 16, 18, 19)
"""Sensors constant (or quantisation-only) within every operating condition."""

OPERATING_CONDITIONS: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 100.0),
    (10.0, 0.25, 100.0),
    (20.0, 0.70, 100.0),
    (25.0, 0.62, 60.0),
    (35.0, 0.84, 100.0),
    (42.0, 0.84, 100.0),
)
"""Set points (altitude in kft, Mach number, throttle resolver angle) of FD002/FD004."""
_SETTING_SCALE = np.asarray([42.0, 0.84, 100.0])
_MULTI_CONDITION = ("FD002", "FD004")

_HOW_TO_GET = (
    "Download CMAPSSData from the NASA Prognostics Data Repository "
    "(https://www.nasa.gov/intelligent-systems-division/discovery-and-systems-health/pcoe/"
    "pcoe-data-set-repository/) and gzip each .txt into <root>/cmapss."
)


@lru_cache(maxsize=8)
def read_table(path: Path) -> np.ndarray:
    """Read a gzip-compressed C-MAPSS text file as a float64 array (cached in-process).

    Rows end with two spaces, so whitespace splitting (not a one-space separator) gives exactly
    the 26 columns of a trajectory file, or the one column of an RUL file.
    """
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, ndmin=2)
    table.setflags(write=False)
    return table


def operating_condition(settings: np.ndarray) -> np.ndarray:
    """Return the index of the nearest :data:`OPERATING_CONDITIONS` set point of each row."""
    points = np.asarray(OPERATING_CONDITIONS) / _SETTING_SCALE
    scaled = settings / _SETTING_SCALE
    distance = ((scaled[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
    return distance.argmin(axis=1)


def _windows(
    table: np.ndarray,
    features: np.ndarray,
    final_rul: np.ndarray | None,
    window: int,
    stride: int,
    last_only: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut every unit's trajectory into windows.

    Returns the windows ``(n, sensors, window)``, the RUL at each window's last cycle, the unit
    and the row index (into ``table``) of each window's last cycle.
    """
    units = table[:, 0].astype(np.int64)
    xs, ruls, owners, ends = [], [], [], []
    for number, unit in enumerate(np.unique(units)):
        rows = np.flatnonzero(units == unit)
        rows = rows[np.argsort(table[rows, 1], kind="stable")]
        if len(rows) < window:
            rows = np.concatenate([np.full(window - len(rows), rows[0]), rows])
        last = len(rows) - 1
        stops = np.asarray([last]) if last_only else np.arange(last, window - 2, -stride)[::-1]
        cycles = table[rows, 1]
        offset = 0.0 if final_rul is None else float(final_rul[number])
        xs.append(features[rows[stops[:, None] - np.arange(window - 1, -1, -1)]])
        ruls.append(offset + cycles[last] - cycles[stops])
        owners.append(np.full(len(stops), unit))
        ends.append(rows[stops])
    x = np.ascontiguousarray(np.concatenate(xs).transpose(0, 2, 1))
    return x, np.concatenate(ruls), np.concatenate(owners), np.concatenate(ends)


@DATASETS.decorator("cmapss")
def load_cmapss(
    root: Path | None = None,
    seed: int = 0,
    subset: str = "FD001",
    horizon: int = 30,
    window: int = 30,
    stride: int = 1,
    device_key: str = "unit",
    test_windows: str = "all",
) -> SourceDataset:
    """Load C-MAPSS windows shaped ``(14, window)`` labelled "fails within ``horizon`` cycles".

    Parameters
    ----------
    root : Path or None
        Data root holding ``cmapss/`` with the ``.txt.gz`` files.
    seed : int
        Unused: the split is the official one and windowing is deterministic.
    subset : {"FD001", "FD002", "FD003", "FD004"}
        Which sub-dataset.
    horizon : int
        A window is positive when the engine fails within this many cycles of its last cycle.
    window : int
        Cycles per window.
    stride : int
        Cycles between the ends of consecutive windows of a unit.
    device_key : {"unit", "condition"}
        One device per engine unit, or per operating condition (FD002/FD004).
    test_windows : {"all", "last"}
        Every window of each test trajectory, or only its last one.

    Raises
    ------
    ConfigError
        For an unknown subset, device key or test-window mode, a non-positive horizon, window or
        stride, or ``device_key="condition"`` on a single-condition subset.
    DatasetNotFoundError
        If the subset's files are not found.
    """
    del seed  # the official split and the windows are deterministic
    _check_choice("subset", subset, SUBSETS)
    _check_choice("device_key", device_key, DEVICE_KEYS)
    _check_choice("test_windows", test_windows, TEST_WINDOWS)
    for name, value in (("horizon", horizon), ("window", window), ("stride", stride)):
        if int(value) < 1:
            raise ConfigError(f"{name} must be a positive number of cycles, got {value}")
    if device_key == "condition" and subset not in _MULTI_CONDITION:
        raise ConfigError(
            f"device_key='condition' needs several operating conditions, but {subset} has one; "
            f"valid choices: device_key='unit', or subset in {', '.join(_MULTI_CONDITION)}"
        )
    files = [f"train_{subset}.txt.gz", f"test_{subset}.txt.gz", f"RUL_{subset}.txt.gz"]
    directory = find_dataset_dir("cmapss", "cmapss", root, files, _HOW_TO_GET)
    train_table, test_table, final_rul = (read_table(directory / f) for f in files)

    sensor_columns = [4 + s for s in SENSORS]  # unit, cycle, 3 settings, then s1..s21
    train_condition = operating_condition(train_table[:, 2:5])
    test_condition = operating_condition(test_table[:, 2:5])
    mean = np.zeros((len(OPERATING_CONDITIONS), len(SENSORS)))
    std = np.ones((len(OPERATING_CONDITIONS), len(SENSORS)))
    for condition in np.unique(train_condition):
        rows = train_table[train_condition == condition][:, sensor_columns]
        mean[condition], std[condition] = rows.mean(axis=0), rows.std(axis=0)

    def _standardised(table: np.ndarray, condition: np.ndarray) -> np.ndarray:
        # float32 before windowing: the windows repeat every cycle ``window`` times.
        return ((table[:, sensor_columns] - mean[condition]) / std[condition]).astype(np.float32)

    x_train, rul_train, units, ends = _windows(
        train_table, _standardised(train_table, train_condition), None, window, stride, False
    )
    x_test, rul_test, _, _ = _windows(
        test_table,
        _standardised(test_table, test_condition),
        final_rul[:, 0],
        window,
        stride,
        test_windows == "last",
    )
    if device_key == "unit":
        groups = np.asarray([f"unit-{u:03d}" for u in units])
    else:
        groups = np.asarray([f"condition-{c}" for c in train_condition[ends]])
    return SourceDataset(
        name="cmapss",
        train=LabeledData(x_train, (rul_train <= horizon).astype(np.int64)),
        groups=groups,
        # Device-local splits hold out stretches of 2 windows' worth of cycles and purge training
        # windows that share a cycle with a held-out one (rows are in cycle order per unit).
        segments=ends // (2 * window),
        spans=np.stack([ends - (window - 1), ends], axis=1),
        test=LabeledData(x_test, (rul_test <= horizon).astype(np.int64)),
        raw=RawData(
            # Windows slide by `stride` cycles: each adds `stride` new cycles of the 14 sensors
            # used, logged as float32. Cycles per second: one 1.5 h flight per cycle (EST).
            bytes_per_example=min(stride, window) * len(SENSORS) * 4,
            bytes_per_second=len(SENSORS) * 4 / CYCLE_SECONDS,
            basis=f"{len(SENSORS)} sensors as float32 once per cycle; {min(stride, window)} new "
            f"cycle(s) a window; one cycle per {CYCLE_SECONDS / 3600:g} h flight (EST)",
        ),
        class_names=CLASS_NAMES,
        description=(
            f"NASA C-MAPSS {subset} turbofan windows of {window} cycles, failure within {horizon} "
            f"cycles, one device per {'engine unit' if device_key == 'unit' else device_key}"
        ),
        metadata={
            "subset": subset,
            "sensors": [f"s{s}" for s in SENSORS],
            "horizon": horizon,
            "window": window,
            "device_key": device_key,
            "test_windows": test_windows,
        },
    )


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown C-MAPSS {name} {value!r}; valid choices: {', '.join(choices)}")
