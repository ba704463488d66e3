"""Smartwatch inertial data of shoulder exercises, shipped inside the ``seglearn`` package.

Burns et al., "Shoulder physiotherapy exercise recognition: machine learning the inertial signals
from a smartwatch", Physiological Measurement 39(7), 2018 (arXiv:1802.01489). The data file is part
of seglearn (BSD licence), so this dataset needs no download and no data root.

Each of the 140 recordings is one set of one exercise (7 classes) by one of 10 subjects, 6 channels
(accelerometer and gyroscope) at 50 Hz. Recordings are cut into windows of ``window`` samples with
``overlap`` (fraction). One device per subject. The central test split holds out whole recordings
(``test_recordings_per_subject`` of each subject, chosen with the seed), so no window of a test
recording overlaps a training window; a device's local split holds out whole recordings too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clients.data import LabeledData
from fl_iot.data.base import DATASETS, RawData, SourceDataset


@DATASETS.decorator("watch")
def load_watch(
    root: Path | None = None,
    seed: int = 0,
    window: int = 100,
    overlap: float = 0.5,
    test_recordings_per_subject: int = 2,
) -> SourceDataset:
    """Load the seglearn smartwatch data as windows of shape ``(6, window)``.

    Parameters
    ----------
    root : Path or None
        Ignored: the data ships with seglearn.
    seed : int
        Chooses the held-out recordings.
    window : int
        Window length in samples (50 Hz).
    overlap : float
        Fraction of overlap between consecutive windows, in [0, 1).
    test_recordings_per_subject : int
        Recordings per subject held out for the central test split.
    """
    from seglearn.datasets import load_watch as seglearn_load_watch

    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    raw = seglearn_load_watch()
    series, labels, subjects = raw["X"], np.asarray(raw["y"]), np.asarray(raw["subject"])
    rng = np.random.default_rng(seed)
    test_recordings: set[int] = set()
    for subject in np.unique(subjects):
        recordings = np.flatnonzero(subjects == subject)
        test_recordings.update(
            int(i) for i in rng.choice(recordings, test_recordings_per_subject, replace=False)
        )
    step = max(1, round(window * (1.0 - overlap)))
    parts: dict[bool, tuple[list[np.ndarray], list[int], list[int], list[int]]] = {
        False: ([], [], [], []),
        True: ([], [], [], []),
    }
    for index, recording in enumerate(series):
        xs, ys, gs, rs = parts[index in test_recordings]
        for start in range(0, len(recording) - window + 1, step):
            xs.append(recording[start : start + window].T)
            ys.append(int(labels[index]))
            gs.append(int(subjects[index]))
            rs.append(index)
    x_train = np.stack(parts[False][0]).astype(np.float32)
    mean = x_train.mean(axis=(0, 2), keepdims=True)
    std = x_train.std(axis=(0, 2), keepdims=True) + 1e-6

    def _labeled(x: list[np.ndarray], y: list[int]) -> LabeledData:
        return LabeledData(
            ((np.stack(x).astype(np.float32) - mean) / std).astype(np.float32),
            np.asarray(y, dtype=np.int64),
        )

    return SourceDataset(
        name="watch",
        train=_labeled(parts[False][0], parts[False][1]),
        groups=np.asarray([f"subject-{g:02d}" for g in parts[False][2]]),
        # Device-local splits hold out whole recordings: their windows overlap.
        segments=np.asarray(parts[False][3]),
        test=_labeled(parts[True][0], parts[True][1]),
        class_names=tuple(str(n) for n in raw["y_labels"]),
        description=(
            "seglearn smartwatch shoulder exercises, 6-axis IMU windows, one device per subject"
        ),
        raw=RawData(
            # Windows overlap by `overlap`: each adds its new samples of 6 channels at 50 Hz,
            # 16 bits each (a smartwatch IMU's native width).
            bytes_per_example=max(1, round(window * (1 - overlap))) * 6 * 2,
            bytes_per_second=50 * 6 * 2,
            basis="6 IMU channels at 50 Hz, 16 bits each; overlapping windows counted once",
        ),
    )
