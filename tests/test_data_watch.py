import numpy as np

from fl_iot.data import load_federated_data, load_source


def test_windows_of_the_seglearn_smartwatch_data_one_group_per_subject():
    source = load_source("watch", None, 0, {})

    assert source.input_shape == (6, 100)
    assert source.num_classes == 7
    assert len(np.unique(source.groups)) == 10
    assert source.train.x.dtype == np.float32 and source.train.y.dtype == np.int64
    # standardised with the training windows' statistics
    assert np.allclose(source.train.x.mean(axis=(0, 2)), 0, atol=1e-4)


def test_held_out_recordings_are_whole_and_chosen_by_the_seed():
    a, b = load_source("watch", None, 0, {}), load_source("watch", None, 1, {})

    # 2 of 14 recordings per subject are held out: about a seventh of the windows
    assert 0.08 < len(a.test) / (len(a.train) + len(a.test)) < 0.22
    assert len(a.test) != len(b.test) or not np.array_equal(a.test.y, b.test.y)


def test_device_local_split_keeps_each_recording_on_one_side():
    data = load_federated_data({"name": "watch", "device_test_fraction": 0.2}, 10, 0)
    segments = data.source.segments
    assert segments is not None

    for device in range(data.num_devices):
        index = data.partitions[device]
        train, test = data.device_split(device)
        assert len(train) + len(test) == len(index)
        assert len(test) > 0
    # recompute the positions to compare recordings on each side
    from fl_iot.data.partition import split_device_data

    index = data.partitions[0]
    train_pos, test_pos = split_device_data(len(index), 0.2, 0 * 100_003 + 0, segments[index])
    assert set(segments[index][train_pos]).isdisjoint(segments[index][test_pos])
