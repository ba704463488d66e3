"""Build ``fl_iot/assets/mitbih_subset.npz``, the compact MIT-BIH subset that ships with fl-iot.

Usage::

    python scripts/build_mitbih_subset.py /work/shared/data

The argument is a data root holding ``mitbih/`` (or the ``mitbih`` directory itself) with the 48
WFDB records of https://physionet.org/content/mitdb/1.0.0/. The script writes the subset and
``fl_iot/assets/ATTRIBUTION.md`` (the ODC-By 1.0 attribution, with the subset's sha256).

What the subset holds: the beats of all 48 records (47 patients) cut and resampled exactly as
``fl_iot.data.mitbih`` does for ``source="records"`` (0.25 s before to 0.45 s after the R peak,
lead MLII or the first channel, 128 samples), rounded to int16 ADC units, with per patient at most
:data:`CAPS` beats of each AAMI class chosen with a fixed seed. Capping the common classes keeps
the file small (about 2.6 MB) and leaves the rare ones (S, F) nearly whole.

The output is byte-for-byte reproducible: the arrays depend only on the records, and the zip
entries get a fixed timestamp (``numpy.savez_compressed`` stamps the current time).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run from a checkout without an install: make ``fl_iot`` importable.
sys.path.insert(0, str(REPO_ROOT))

from fl_iot.data import mitbih  # noqa: E402
from fl_iot.data.paths import find_dataset_dir  # noqa: E402

CAPS: dict[str, int] = {"N": 200, "S": 500, "V": 400, "Q": 300}
"""Most beats of each AAMI class kept per patient; F (fusion, the rarest) is kept whole."""
SELECTION_SEED = 0
WINDOW_BEFORE_S, WINDOW_AFTER_S, LENGTH = 0.25, 0.45, 128
OUTPUT = REPO_ROOT / "fl_iot" / "assets" / mitbih.BUNDLED_ASSET
ATTRIBUTION = REPO_ROOT / "fl_iot" / "assets" / "ATTRIBUTION.md"
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def build_subset(data_root: Path) -> dict[str, np.ndarray]:
    """Return the subset's arrays, built from the WFDB records under ``data_root``."""
    directory = find_dataset_dir(
        "mitbih",
        "mitbih",
        data_root,
        [f"{r}.{ext}" for r in mitbih.RECORDS for ext in ("dat", "hea", "atr")],
        "Pass the data root that holds the 48 MIT-BIH records.",
    )
    before, after = mitbih.window_samples(WINDOW_BEFORE_S, WINDOW_AFTER_S)
    records = {
        r: mitbih.extract_record_beats(directory, r, before, after, LENGTH) for r in mitbih.RECORDS
    }
    patients = sorted({mitbih.patient_of(r) for r in mitbih.RECORDS})
    rng = np.random.default_rng(SELECTION_SEED)
    chosen: list[tuple[str, np.ndarray]] = []
    for patient in patients:
        own = [r for r in mitbih.RECORDS if mitbih.patient_of(r) == patient]
        # Pool the patient's records, so that a cap applies to the patient, not to each record.
        labels = np.concatenate([records[r][1] for r in own])
        origin = np.concatenate([np.full(len(records[r][1]), i) for i, r in enumerate(own)])
        position = np.concatenate([np.arange(len(records[r][1])) for r in own])
        keep = np.zeros(len(labels), dtype=bool)
        for label, name in enumerate(mitbih.CLASS_NAMES):
            members = np.flatnonzero(labels == label)
            cap = CAPS.get(name)
            if cap is not None and len(members) > cap:
                members = rng.choice(members, cap, replace=False)
            keep[members] = True
        for i, record in enumerate(own):
            chosen.append((record, np.sort(position[keep & (origin == i)])))
    beats = np.concatenate([records[r][0][index] for r, index in chosen])
    return {
        "beats": np.round(beats).astype(np.int16),
        "labels": np.concatenate([records[r][1][index] for r, index in chosen]).astype(np.int8),
        "records": np.concatenate([np.full(len(index), int(r)) for r, index in chosen]).astype(
            np.int16
        ),
        "patients": np.concatenate(
            [np.full(len(index), int(mitbih.patient_of(r).split("-")[1])) for r, index in chosen]
        ).astype(np.int16),
        "peaks": np.concatenate([records[r][2][index] for r, index in chosen]).astype(np.int32),
        "before": np.asarray(before, dtype=np.int16),
        "after": np.asarray(after, dtype=np.int16),
        "length": np.asarray(LENGTH, dtype=np.int16),
        "sampling_hz": np.asarray(mitbih.SAMPLING_HZ, dtype=np.int16),
        "class_names": np.asarray(mitbih.CLASS_NAMES),
    }


def write_npz(arrays: dict[str, np.ndarray], path: Path) -> bytes:
    """Write ``arrays`` as a compressed ``.npz`` with fixed zip timestamps; return its bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(entry, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, array, allow_pickle=False)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def attribution(arrays: dict[str, np.ndarray], sha256: str, size: int) -> str:
    """Return the text of ``ATTRIBUTION.md`` for the subset."""
    counts = np.bincount(arrays["labels"], minlength=len(mitbih.CLASS_NAMES))
    per_class = ", ".join(f"{n} {c}" for n, c in zip(mitbih.CLASS_NAMES, counts, strict=True))
    caps = ", ".join(f"{name} {cap}" for name, cap in CAPS.items()) + ", F all (uncapped)"
    return f"""# Attribution of the files in `fl_iot/assets/`

## `{OUTPUT.name}`: a subset derived from the MIT-BIH Arrhythmia Database

This file is derived from the MIT-BIH Arrhythmia Database (PhysioNet `mitdb` 1.0.0), which is
licensed under the Open Data Commons Attribution License v1.0 (ODC-By 1.0). The derived subset is
distributed under the same licence. When you use it, cite:

- Moody GB, Mark RG. The impact of the MIT-BIH Arrhythmia Database. IEEE Eng in Med and Biol
  20(3):45-50 (May-June 2001).
- Goldberger A, Amaral L, Glass L, Hausdorff J, Ivanov PC, Mark R, Mietus JE, Moody GB, Peng CK,
  Stanley HE. PhysioBank, PhysioToolkit, and PhysioNet: Components of a new research resource for
  complex physiologic signals. Circulation 101(23):e215-e220 (2000).
- Database: https://physionet.org/content/mitdb/1.0.0/ (DOI 10.13026/C2F305)

### What was derived, and how

From each of the 48 original WFDB records (`.dat`, `.hea`, `.atr`; 47 subjects, records 201 and
202 being one subject), `scripts/build_mitbih_subset.py`:

1. takes lead MLII, or the first channel where a record has no MLII (records 102 and 104);
2. cuts every beat annotated with an AAMI EC57 beat symbol (N = N,L,R,e,j; S = A,a,J,S;
   V = V,E; F = F; Q = /,f,Q) from {WINDOW_BEFORE_S} s before to {WINDOW_AFTER_S} s after the
   annotated R peak ({int(arrays["before"])} + {int(arrays["after"])} samples at 360 Hz),
   skipping the few beats whose window leaves the record;
3. resamples each beat to {LENGTH} samples (`scipy.signal.resample_poly`, `padtype="line"`) and
   rounds it to int16 ADC units (5 uV) relative to the record's baseline;
4. keeps per patient at most this many beats of each class, chosen at random with seed
   {SELECTION_SEED}: {caps}.

The subset holds {len(arrays["labels"])} beats of {len(np.unique(arrays["patients"]))} patients:
{per_class}. Its class balance is therefore not the database's.

Arrays: `beats` (int16, n x {LENGTH}), `labels` (int8 AAMI class index in the order
{", ".join(mitbih.CLASS_NAMES)}), `records` and `patients` (int16 record name, and the record that
names the subject), `peaks` (int32 R-peak sample in the record) and the window parameters
(`before`, `after`, `length`, `sampling_hz`, `class_names`).

The records were read from a copy of the 48 record files whose WFDB signal checksums, signal
lengths and annotation counts all agree with the PhysioNet release.

### Rebuild

```
python scripts/build_mitbih_subset.py <data root holding mitbih/>
```

The output is byte-for-byte reproducible with the same numpy, scipy and zlib versions.

- size: {size} bytes
- sha256: `{sha256}`
"""


def main(argv: list[str] | None = None) -> int:
    """Build the subset and its attribution; print the size and sha256."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", type=Path, help="directory holding mitbih/ (or mitbih itself)")
    args = parser.parse_args(argv)
    arrays = build_subset(args.data_root)
    data = write_npz(arrays, OUTPUT)
    sha256 = hashlib.sha256(data).hexdigest()
    ATTRIBUTION.write_text(attribution(arrays, sha256, len(data)), encoding="utf-8")
    print(f"wrote {OUTPUT} ({len(data)} bytes, {len(arrays['labels'])} beats), sha256 {sha256}")
    print(f"wrote {ATTRIBUTION}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
