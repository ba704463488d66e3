"""MIT-BIH loader: the bundled subset (fully) and the WFDB records path (on a few records)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from fl_iot.data import DATA_ROOT_ENV, load_federated_data
from fl_iot.data.mitbih import (
    BUNDLED_ASSET,
    CLASS_NAMES,
    RECORDS,
    extract_record_beats,
    load_mitbih,
    patient_of,
)
from fl_iot.data.paths import find_bundled_asset
from fl_iot.errors import ConfigError, DatasetNotFoundError

SUBSET_BEATS = 18484  # written by scripts/build_mitbih_subset.py (see fl_iot/assets/ATTRIBUTION.md)
FEW_RECORDS = ["100", "102", "201", "202"]


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1)}


@pytest.fixture(autouse=True)
def _no_env_data_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # The bundled path must not depend on a data root; the records tests pass theirs explicitly.
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)


def test_bundled_subset_has_every_patient_and_class() -> None:
    # Execute
    data = load_mitbih()

    # Assert
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.int64
    assert data.input_shape == (1, 128)
    assert data.test.x.shape[1:] == (1, 128)
    assert len(data.train) + len(data.test) == SUBSET_BEATS
    assert data.class_names == CLASS_NAMES == ("N", "S", "V", "F", "Q")
    assert len(np.unique(data.groups)) == 47
    assert not data.synthetic
    assert np.all(np.bincount(data.test.y, minlength=5) > 100)


def test_bundled_subset_beats_are_standardised_one_by_one() -> None:
    # Execute
    x = load_mitbih().train.x[:, 0, :]

    # Assert
    np.testing.assert_allclose(x.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=1), 1.0, atol=1e-3)


def test_records_201_and_202_are_one_patient() -> None:
    # Execute
    patients = {patient_of(record) for record in RECORDS}

    # Assert
    assert len(RECORDS) == 48
    assert len(patients) == 47
    assert patient_of("201") == patient_of("202") == "patient-201"


def test_bundled_subset_matches_its_attribution_and_patient_ids() -> None:
    # Prepare
    path = find_bundled_asset(BUNDLED_ASSET)
    attribution = (path.parent / "ATTRIBUTION.md").read_text(encoding="utf-8")

    # Execute
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    with np.load(path) as bundle:
        records, patients = bundle["records"], bundle["patients"]

    # Assert
    assert re.search(rf"sha256: `{sha256}`", attribution)
    assert path.stat().st_size < 4_000_000
    assert {f"patient-{p}" for p in patients} == {patient_of(str(r)) for r in records}
    assert all(patient_of(str(r)) == f"patient-{p}" for r, p in zip(records, patients, strict=True))


def test_central_test_split_is_disjoint_and_stratified_per_patient() -> None:
    # Execute
    data = load_mitbih(test_fraction=0.2)

    # Assert
    assert not _rows(data.train.x) & _rows(data.test.x)
    total = np.bincount(data.train.y, minlength=5) + np.bincount(data.test.y, minlength=5)
    held_out = np.bincount(data.test.y, minlength=5) / total
    np.testing.assert_allclose(held_out, 0.2, atol=0.01)


def test_same_seed_same_split_other_seed_other_split() -> None:
    # Execute
    first, again, other = load_mitbih(seed=3), load_mitbih(seed=3), load_mitbih(seed=4)

    # Assert
    np.testing.assert_array_equal(first.train.x, again.train.x)
    np.testing.assert_array_equal(first.test.y, again.test.y)
    np.testing.assert_array_equal(first.groups, again.groups)
    assert len(other.test) == len(first.test)
    assert _rows(other.test.x) != _rows(first.test.x)


def test_records_path_reads_few_records(shared_data_root: Path) -> None:
    # Execute
    data = load_mitbih(shared_data_root, source="records", records=FEW_RECORDS)

    # Assert: 201 and 202 are one patient, and 102 (leads V5, V2) is read from its first channel.
    assert sorted(np.unique(data.groups)) == ["patient-100", "patient-102", "patient-201"]
    assert data.input_shape == (1, 128)
    counts = np.bincount(np.concatenate([data.train.y, data.test.y]), minlength=5)
    # Published AAMI counts: 100 has 2239 N, 33 S, 1 V (its first and last N lie closer to the
    # record's ends than the beat window); 102 has 99 N, 4 V, 2084 Q (one Q at an end);
    # 201 + 202 have 3696 N, 183 S, 217 V, 3 F (one N at an end).
    np.testing.assert_array_equal(counts, [2237 + 99 + 1635 + 2060, 33 + 183, 1 + 4 + 217, 3, 2083])


def test_record_100_beats_match_its_annotations(shared_data_root: Path) -> None:
    # Execute
    beats, labels, peaks = extract_record_beats(shared_data_root / "mitbih", "100", 90, 162, 128)

    # Assert
    np.testing.assert_array_equal(np.bincount(labels, minlength=5), [2237, 33, 1, 0, 0])
    assert beats.shape == (2273 - 2, 128)
    assert peaks[0] == 370  # the beat at sample 77 starts less than 0.25 s into the record


def test_bundled_beats_equal_the_records_path_beats(shared_data_root: Path) -> None:
    # Prepare
    with np.load(find_bundled_asset(BUNDLED_ASSET)) as bundle:
        mine = bundle["records"] == 102
        stored, peaks = bundle["beats"][mine], bundle["peaks"][mine]

    # Execute
    beats, _, all_peaks = extract_record_beats(shared_data_root / "mitbih", "102", 90, 162, 128)

    # Assert: the subset is the records path rounded to whole ADC units.
    index = np.searchsorted(all_peaks, peaks)
    np.testing.assert_array_equal(all_peaks[index], peaks)
    np.testing.assert_allclose(stored, beats[index], atol=0.5 + 1e-3)


def test_missing_records_name_where_they_were_looked_for(tmp_path: Path) -> None:
    # Execute
    with pytest.raises(DatasetNotFoundError) as error:
        load_mitbih(tmp_path, source="records", records=["100"])

    # Assert
    assert str(tmp_path / "mitbih") in str(error.value)
    assert "100.dat" in str(error.value)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"source": "cloud"}, ["'cloud'", "bundled, records"]),
        ({"records": ["100", "110"]}, ["'110'", "234"]),
        ({"test_fraction": 1.0}, ["1.0", "(0, 1)"]),
        ({"window_after_s": 0.6}, ["216", "source=records"]),
    ],
)
def test_bad_options_name_the_value_and_the_choices(
    options: dict[str, object], named: list[str]
) -> None:
    # Execute
    with pytest.raises(ConfigError) as error:
        load_mitbih(**options)  # type: ignore[arg-type]

    # Assert
    for text in named:
        assert text in str(error.value)


def test_partitions_one_device_per_patient_end_to_end() -> None:
    # Execute
    federated = load_federated_data(
        {"name": "mitbih", "partition": "natural", "options": {"source": "bundled"}}, None, 0
    )

    # Assert
    assert federated.num_devices == 47
    assert len(set(federated.natural_keys)) == 47
    assert sum(len(p) for p in federated.partitions) == len(federated.source.train)
    local_train, local_test = federated.device_split(0)
    assert local_train.x.shape[1:] == (1, 128) and len(local_test) > 0
