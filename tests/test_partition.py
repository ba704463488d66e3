import numpy as np
import pytest

from fl_iot.data.partition import partition_indices, split_device_data
from fl_iot.errors import ConfigError

LABELS = np.array([0, 1, 0, 1, 2, 2, 0, 1, 0, 0] * 10)
GROUPS = np.array(list("aabbccddee") * 10)


def test_natural_partition_gives_one_device_per_key_in_key_order():
    partitions = partition_indices(LABELS, GROUPS, "natural", 5, seed=0)

    assert [sorted(set(GROUPS[p])) for p in partitions] == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert sorted(np.concatenate(partitions).tolist()) == list(range(100))


def test_natural_partition_with_fewer_devices_picks_a_seeded_subset_of_keys():
    first = partition_indices(LABELS, GROUPS, "natural", 3, seed=7)
    again = partition_indices(LABELS, GROUPS, "natural", 3, seed=7)

    assert len(first) == 3
    assert all(len(set(GROUPS[p])) == 1 for p in first)
    assert [p.tolist() for p in first] == [p.tolist() for p in again]


def test_natural_partition_refuses_more_devices_than_keys():
    with pytest.raises(ConfigError, match=r"num_devices=6 but the natural partition has only 5"):
        partition_indices(LABELS, GROUPS, "natural", 6, seed=0)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_iid_and_dirichlet_cover_every_sample_once(scheme):
    partitions = partition_indices(LABELS, GROUPS, scheme, 4, seed=0, dirichlet_alpha=1.0)

    joined = np.concatenate(partitions)
    assert len(partitions) == 4
    assert sorted(joined.tolist()) == list(range(100))


def test_dirichlet_is_deterministic_for_a_seed_and_differs_across_seeds():
    a = partition_indices(LABELS, GROUPS, "dirichlet", 4, seed=1, dirichlet_alpha=0.3)
    b = partition_indices(LABELS, GROUPS, "dirichlet", 4, seed=1, dirichlet_alpha=0.3)
    c = partition_indices(LABELS, GROUPS, "dirichlet", 4, seed=2, dirichlet_alpha=0.3)

    assert [p.tolist() for p in a] == [p.tolist() for p in b]
    assert [p.tolist() for p in a] != [p.tolist() for p in c]


def test_unknown_scheme_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'shards'.*natural, iid, dirichlet"):
        partition_indices(LABELS, GROUPS, "shards", 4, seed=0)


def test_device_split_keeps_one_training_sample_and_is_disjoint():
    train, test = split_device_data(10, 0.2, seed=0)
    assert len(train) == 8 and len(test) == 2
    assert set(train).isdisjoint(test)

    single_train, single_test = split_device_data(1, 0.5, seed=0)
    assert single_train.tolist() == [0] and len(single_test) == 0


def test_device_split_rejects_a_fraction_of_one():
    with pytest.raises(ConfigError, match=r"device_test_fraction must be in \[0, 1\), got 1.0"):
        split_device_data(10, 1.0, seed=0)


def test_natural_partition_equals_flwr_datasets_natural_id_partitioner():
    from datasets import Dataset
    from flwr_datasets.partitioner import NaturalIdPartitioner

    partitioner = NaturalIdPartitioner(partition_by="group")
    partitioner.dataset = Dataset.from_dict({"index": list(range(100)), "group": GROUPS.tolist()})
    expected = {
        partitioner.partition_id_to_natural_id[pid]: sorted(
            partitioner.load_partition(pid)["index"]
        )
        for pid in range(partitioner.num_partitions)
    }

    ours = partition_indices(LABELS, GROUPS, "natural", None, seed=0)

    assert {str(GROUPS[p[0]]): p.tolist() for p in ours} == expected


def test_segment_split_keeps_segments_whole_and_holds_out_about_the_fraction():
    segments = np.repeat(np.arange(10), 5)  # 10 blocks of 5 samples

    train, test = split_device_data(50, 0.2, seed=3, segments=segments)

    assert set(segments[train]).isdisjoint(segments[test])
    assert len(test) == 10 and len(train) == 40


def test_segment_split_purges_training_windows_that_overlap_a_test_window():
    # 12 windows of length 3 with stride 1 over one trajectory, blocks of 4 windows.
    ends = np.arange(2, 14)
    spans = np.stack([ends - 2, ends], axis=1)
    segments = ends // 4

    train, test = split_device_data(12, 0.25, seed=0, segments=segments, spans=spans)

    test_cycles = {c for s, e in spans[test] for c in range(s, e + 1)}
    train_cycles = {c for s, e in spans[train] for c in range(s, e + 1)}
    assert test_cycles.isdisjoint(train_cycles)
    assert len(train) + len(test) < 12  # the windows next to the held-out block were purged


def test_a_single_segment_stays_for_training():
    train, test = split_device_data(5, 0.5, seed=0, segments=np.zeros(5, dtype=int))

    assert len(train) == 5 and len(test) == 0


# ---- dirichlet ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "seed"), [(0.3, 1), (1.0, 0), (5.0, 3), (0.5, 4)])
def test_dirichlet_equals_flwr_datasets_dirichlet_partitioner_where_it_succeeds(alpha, seed):
    from flwr_datasets.partitioner import DirichletPartitioner

    from fl_iot.data.partition import _index_table

    labels = np.random.default_rng(9).integers(0, 4, size=400)
    partitioner = DirichletPartitioner(
        num_partitions=6, partition_by="label", alpha=alpha, min_partition_size=2, seed=seed
    )
    partitioner.dataset = _index_table(labels, np.zeros(400))
    expected = [partitioner.load_partition(i)["index"] for i in range(6)]

    ours = partition_indices(labels, np.zeros(400), "dirichlet", 6, seed, dirichlet_alpha=alpha)

    assert [p.tolist() for p in ours] == expected


def test_dirichlet_tops_up_devices_that_every_draw_leaves_short(caplog):
    # 30 devices, 3 classes, alpha 0.05: each class lands on one or two devices, in every draw.
    labels = np.repeat([0, 1, 2], [200, 100, 60])

    with caplog.at_level("INFO", logger="fl_iot.data.partition"):
        partitions = partition_indices(
            labels, labels, "dirichlet", 30, seed=0, dirichlet_alpha=0.05, min_partition_size=3
        )

    assert min(len(p) for p in partitions) >= 3
    assert sorted(np.concatenate(partitions).tolist()) == list(range(360))
    # Still a strong skew: most devices hold one class only.
    assert sum(len(np.unique(labels[p])) == 1 for p in partitions) >= 20
    assert "held fewer than 3 samples after 11 draws at alpha=0.05" in caplog.text
    again = partition_indices(
        labels, labels, "dirichlet", 30, seed=0, dirichlet_alpha=0.05, min_partition_size=3
    )
    assert [p.tolist() for p in partitions] == [p.tolist() for p in again]


def test_dirichlet_refuses_more_devices_than_the_minimum_size_allows():
    with pytest.raises(
        ConfigError, match=r"100 training samples cannot serve num_devices=51.*<= 50"
    ):
        partition_indices(LABELS, GROUPS, "dirichlet", 51, seed=0, dirichlet_alpha=0.5)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_dirichlet_rejects_a_non_positive_alpha(alpha):
    with pytest.raises(ConfigError, match="dirichlet_alpha must be positive"):
        partition_indices(LABELS, GROUPS, "dirichlet", 4, seed=0, dirichlet_alpha=alpha)


def test_a_strong_label_skew_works_on_healthcare_wearables_for_every_seed():
    from fl_iot.data.federated import load_federated_data

    dataset = {
        "name": "mitbih",
        "partition": "dirichlet",
        "dirichlet_alpha": 0.1,
        "options": {"source": "bundled"},
    }
    for seed in range(10):
        federated = load_federated_data(dataset, None, seed)
        sizes = [len(p) for p in federated.partitions]
        assert len(sizes) == 47
        assert min(sizes) >= 2, seed
        assert sum(sizes) == len(federated.source.train.y), seed
