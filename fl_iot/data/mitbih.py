"""MIT-BIH Arrhythmia Database heartbeats, one device per patient (the default scenario).

Moody GB, Mark RG. "The impact of the MIT-BIH Arrhythmia Database." IEEE Eng in Med and Biol
20(3):45-50 (2001); Goldberger A, et al. "PhysioBank, PhysioToolkit, and PhysioNet." Circulation
101(23):e215-e220 (2000); https://physionet.org/content/mitdb/1.0.0/ (DOI 10.13026/C2F305).
Licence: Open Data Commons Attribution v1.0 (ODC-By 1.0); cite the papers above.

The 48 half-hour two-lead records (360 Hz) come from 47 subjects: records 201 and 202 are the same
person, so they form one device. Design decisions:

Beats
    One sample per annotated beat, cut from ``window_before_s`` (0.25 s) before to
    ``window_after_s`` (0.45 s) after the annotated R peak (90 + 162 = 252 samples at 360 Hz) and
    resampled to ``length`` (128) samples with a polyphase anti-aliasing filter. Beats whose window
    runs past either end of the record are skipped (at most a couple per record). Adjacent windows
    overlap by a few samples at fast heart rates; that is the nature of beat-level ECG data.
Lead
    MLII where the record has it (it is the first channel except in record 114), otherwise the
    first channel: records 102 and 104 were recorded with V5 and V2 only. Samples are shaped
    ``(1, length)`` so that :class:`fl_iot.models.Cnn1d` takes them directly.
Classes
    The five AAMI EC57 classes: N = {N, L, R, e, j}, S = {A, a, J, S}, V = {V, E}, F = {F},
    Q = {/, f, Q}. Every other annotation (rhythm changes, noise, the ventricular flutter waves
    ``!``) is not a classifiable beat and is skipped. The paced records 102, 104, 107 and 217 are
    kept (their paced beats are class Q); list the records you want with ``records`` to follow the
    AAMI protocol that excludes them.
Normalisation
    Each beat is standardised on its own (zero mean, unit standard deviation). This removes the
    baseline wander and the electrode gain that differ between patients and hours of a recording,
    and it is what a wearable can compute on one beat without any fleet statistics.
Central test split
    A seeded, stratified ``test_fraction`` (0.2) of every patient's beats of every class: the server
    evaluates on the same patients the devices hold, on beats no device holds (an intra-patient
    evaluation, which is easier than the inter-patient protocol of de Chazal et al. 2004).

Two sources
    ``source="bundled"`` (the default) reads ``fl_iot/assets/mitbih_subset.npz``, a compact subset
    of all 47 patients that ships with fl-iot, built by ``scripts/build_mitbih_subset.py`` (see
    ``fl_iot/assets/ATTRIBUTION.md``). It stores the beats resampled but not normalised, in ADC
    units, so both sources go through the same normalisation and split. Its class balance is not
    the database's: it caps the common classes per patient. ``source="records"`` reads the WFDB
    records from the data root (``<root>/mitbih``) and gives every beat.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np

from clients.data import LabeledData
from fl_iot.data.base import DATASETS, RawData, SourceDataset
from fl_iot.data.paths import find_bundled_asset, find_dataset_dir
from fl_iot.errors import ConfigError

SAMPLING_HZ = 360
ADC_BITS = 11  # the MIT-BIH recordings' resolution over 10 mV (SOURCE.md)
"""Sampling rate of every MIT-BIH record."""

RECORDS: tuple[str, ...] = tuple(
    [str(r) for r in (*range(100, 110), *range(111, 120), *range(121, 125))]
    + [str(r) for r in (200, 201, 202, 203, 205, 207, 208, 209, 210, 212, 213, 214, 215, 217)]
    + [str(r) for r in (219, 220, 221, 222, 223, 228, 230, 231, 232, 233, 234)]
)
"""The 48 record names of the database."""

PACED_RECORDS: tuple[str, ...] = ("102", "104", "107", "217")
"""Records of patients with a pacemaker (AAMI EC57 excludes them from its protocols)."""

_SAME_SUBJECT = {"202": "201"}
"""Records of a subject who has another record: the record that names the subject's device."""

CLASS_NAMES: tuple[str, ...] = ("N", "S", "V", "F", "Q")
"""AAMI EC57 heartbeat classes: normal, supraventricular ectopic, ventricular ectopic, fusion,
unknown (paced and unclassifiable)."""

AAMI_CLASS_OF_SYMBOL: dict[str, int] = {
    **dict.fromkeys("NLRej", 0),
    **dict.fromkeys("AaJS", 1),
    **dict.fromkeys("VE", 2),
    "F": 3,
    **dict.fromkeys("/fQ", 4),
}
"""AAMI class index of each MIT-BIH beat annotation symbol; other symbols are not beats."""

SOURCES = ("bundled", "records")
BUNDLED_ASSET = "mitbih_subset.npz"
_HOW_TO_GET = (
    "Download the 48 records (.dat, .hea, .atr) of https://physionet.org/content/mitdb/1.0.0/ "
    "into <root>/mitbih, or use dataset.options.source=bundled."
)


def patient_of(record: str) -> str:
    """Return the device key of a record's subject (``"patient-201"`` for records 201 and 202)."""
    return f"patient-{_SAME_SUBJECT.get(record, record)}"


def window_samples(window_before_s: float, window_after_s: float) -> tuple[int, int]:
    """Return the beat window in samples at 360 Hz: ``(before, after)`` the R peak."""
    return round(window_before_s * SAMPLING_HZ), round(window_after_s * SAMPLING_HZ)


@lru_cache(maxsize=64)
def extract_record_beats(
    directory: Path, record: str, before: int, after: int, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut and resample the classifiable beats of one WFDB record.

    Cached in-process: a Ray worker, or a test that loads several splits, parses a record once.

    Parameters
    ----------
    directory : Path
        Directory holding ``<record>.dat``, ``.hea`` and ``.atr``.
    record : str
        Record name, e.g. ``"100"``.
    before, after : int
        Samples (360 Hz) kept before and after the annotated R peak.
    length : int
        Samples per beat after resampling.

    Returns
    -------
    beats : np.ndarray
        ``float32`` ``(n, length)``, in ADC units (5 µV) relative to the record's baseline.
    labels : np.ndarray
        ``int64`` AAMI class index of each beat.
    peaks : np.ndarray
        ``int64`` sample index of each beat's R peak in the record.
    """
    import wfdb
    from scipy.signal import resample_poly

    path = str(directory / record)
    header = wfdb.rdheader(path)
    channel = header.sig_name.index("MLII") if "MLII" in header.sig_name else 0
    signal = wfdb.rdrecord(path, channels=[channel], physical=False).d_signal[:, 0]
    signal = signal.astype(np.float32) - np.float32(header.baseline[channel])
    annotation = wfdb.rdann(path, "atr")
    symbols = np.asarray(annotation.symbol)
    peaks = np.asarray(annotation.sample, dtype=np.int64)
    is_beat = np.isin(symbols, list(AAMI_CLASS_OF_SYMBOL))
    inside = (peaks - before >= 0) & (peaks + after <= len(signal))
    keep = is_beat & inside
    peaks = peaks[keep]
    labels = np.asarray([AAMI_CLASS_OF_SYMBOL[s] for s in symbols[keep]], dtype=np.int64)
    window = before + after
    beats = signal[peaks[:, None] + np.arange(-before, after)[None, :]]
    if window != length:
        divisor = math.gcd(length, window)
        # padtype="line" extends each beat linearly instead of with zeros, so the filter does not
        # ring at the window edges.
        beats = resample_poly(beats, length // divisor, window // divisor, axis=1, padtype="line")
    beats = beats.astype(np.float32)
    for cached in (beats, labels, peaks):
        cached.setflags(write=False)  # shared by every caller of the cache
    return beats, labels, peaks


def normalise_beats(beats: np.ndarray) -> np.ndarray:
    """Standardise each beat (row) to zero mean and unit standard deviation.

    The standard deviation is floored at one ADC unit (5 µV) so that a flat beat (lead off) maps
    to zeros instead of amplified quantisation noise.
    """
    beats = np.asarray(beats, dtype=np.float32)
    mean = beats.mean(axis=1, keepdims=True)
    std = np.maximum(beats.std(axis=1, keepdims=True), 1.0)
    return ((beats - mean) / std).astype(np.float32)


def stratified_holdout(
    groups: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """Return a mask of the held-out samples: ``fraction`` of every (group, class) cell.

    Each cell holds out ``round(fraction * size)`` samples chosen with ``seed`` (halves round up),
    so a class a patient shows once or twice stays with the patient's device.
    """
    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(labels), dtype=bool)
    group_index = np.unique(groups, return_inverse=True)[1]
    cell_index = np.unique(np.stack([group_index, labels], axis=1), axis=0, return_inverse=True)[
        1
    ].ravel()
    order = np.argsort(cell_index, kind="stable")
    boundaries = np.flatnonzero(np.diff(cell_index[order])) + 1
    for members in np.split(order, boundaries):
        count = math.floor(fraction * len(members) + 0.5)
        held_out[rng.choice(members, count, replace=False)] = True
    return held_out


def _check_records(records: object, available: tuple[str, ...]) -> tuple[str, ...]:
    if records is None:
        return available
    if isinstance(records, str | int):
        records = [records]
    if not isinstance(records, Iterable):
        raise ConfigError(
            f"dataset.options.records must be a list of record names, got {records!r}"
        )
    chosen = tuple(str(r) for r in records)
    unknown = sorted(set(chosen) - set(available))
    if unknown or not chosen:
        raise ConfigError(
            f"unknown MIT-BIH records {unknown or list(chosen)!r} in dataset.options.records; "
            f"valid choices: {', '.join(available)}"
        )
    return tuple(dict.fromkeys(chosen))


def _load_records(
    root: Path | None, records: object, before: int, after: int, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    chosen = _check_records(records, RECORDS)
    directory = find_dataset_dir(
        "mitbih",
        "mitbih",
        root,
        [f"{r}.{ext}" for r in chosen for ext in ("dat", "hea", "atr")],
        _HOW_TO_GET,
    )
    parts = [extract_record_beats(directory, r, before, after, length) for r in chosen]
    beats = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    record_ids = np.concatenate([np.full(len(p[1]), r) for r, p in zip(chosen, parts, strict=True)])
    peaks = np.concatenate([p[2] for p in parts])
    return beats, labels, record_ids, peaks


def _load_bundled(
    records: object, before: int, after: int, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with np.load(find_bundled_asset(BUNDLED_ASSET)) as bundle:
        stored = (int(bundle["before"]), int(bundle["after"]), int(bundle["length"]))
        if stored != (before, after, length):
            raise ConfigError(
                f"the bundled MIT-BIH subset has beats of {stored[0]} + {stored[1]} samples at "
                f"{SAMPLING_HZ} Hz resampled to {stored[2]}, not the requested {before} + {after} "
                f"resampled to {length}; valid choices: the bundled window, or source=records"
            )
        beats, labels = bundle["beats"], bundle["labels"].astype(np.int64)
        record_ids = bundle["records"].astype(str)
        peaks = bundle["peaks"].astype(np.int64)
    chosen = _check_records(records, tuple(str(r) for r in np.unique(record_ids)))
    keep = np.isin(record_ids, chosen)
    return beats[keep], labels[keep], record_ids[keep], peaks[keep]


@DATASETS.decorator("mitbih")
def load_mitbih(
    root: Path | None = None,
    seed: int = 0,
    source: str = "bundled",
    records: list[str] | None = None,
    test_fraction: float = 0.2,
    window_before_s: float = 0.25,
    window_after_s: float = 0.45,
    length: int = 128,
) -> SourceDataset:
    """Load MIT-BIH heartbeats shaped ``(1, length)``, one device per patient.

    Parameters
    ----------
    root : Path or None
        Data root holding ``mitbih/`` (only for ``source="records"``).
    seed : int
        Chooses the held-out beats.
    source : {"bundled", "records"}
        The subset shipped with fl-iot, or every beat of the WFDB records under ``root``.
    records : list of str or None
        Records to use (e.g. ``["100", "101"]``); ``None`` uses all of the source's records.
    test_fraction : float
        Fraction of each patient's beats of each class held out for the central test split.
    window_before_s, window_after_s : float
        Seconds kept before and after the R peak.
    length : int
        Samples per beat after resampling.

    Raises
    ------
    ConfigError
        For an unknown source or record, a fraction outside (0, 1), a window the bundled subset
        was not built with, or a non-positive window.
    DatasetNotFoundError
        If the records (or the bundled subset) are not found.
    """
    if source not in SOURCES:
        raise ConfigError(f"unknown MIT-BIH source {source!r}; valid choices: {', '.join(SOURCES)}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    before, after = window_samples(window_before_s, window_after_s)
    if before < 0 or after < 1 or length < 8:
        raise ConfigError(
            f"the beat window must be non-negative before and positive after the R peak with "
            f"length >= 8, got window_before_s={window_before_s}, "
            f"window_after_s={window_after_s}, length={length}"
        )
    if source == "records":
        beats, labels, record_ids, _ = _load_records(root, records, before, after, length)
    else:
        beats, labels, record_ids, _ = _load_bundled(records, before, after, length)
    groups = np.asarray([patient_of(r) for r in record_ids])
    x = normalise_beats(beats)[:, None, :]
    held_out = stratified_holdout(groups, labels, test_fraction, seed)
    return SourceDataset(
        name="mitbih",
        train=LabeledData(x[~held_out], labels[~held_out]),
        groups=groups[~held_out],
        test=LabeledData(x[held_out], labels[held_out]),
        class_names=CLASS_NAMES,
        description=(
            f"MIT-BIH Arrhythmia heartbeats ({source}), lead MLII, AAMI classes, "
            "one device per patient"
        ),
        raw=RawData(
            # A beat is ~0.8 s of the lead at 72 bpm and its window 0.7 s: the lead's samples
            # between beats are counted once per beat, at the 11-bit ADC resolution.
            bytes_per_example=(before + after) * ADC_BITS / 8,
            bytes_per_second=SAMPLING_HZ * ADC_BITS / 8,
            basis=f"lead MLII at {SAMPLING_HZ} Hz, {ADC_BITS}-bit ADC; a beat's window of "
            f"{before + after} samples",
        ),
        metadata={
            "source": source,
            "records": sorted(set(record_ids.tolist())),
            "window_samples": (before, after),
            "sampling_hz": SAMPLING_HZ,
            "test_fraction": test_fraction,
        },
    )
