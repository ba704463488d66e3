"""What a device does per message, and what a process reuses between devices."""

from __future__ import annotations

import functools

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

import fl_iot.device_runtime as runtime
from fl_iot.device_runtime import fresh_model, local_update, run_context
from fl_iot.device_state import DeviceStateStore
from fl_iot.models import model_factory
from tests.e2e import resolved_config


def updates_in_turn(run, arrays, devices):
    config = ConfigRecord({"server-round": 1})
    return [local_update(run, run.federation[d], arrays, config, RecordDict())[0] for d in devices]


def test_a_reused_module_trains_each_device_as_a_fresh_one_would():
    """One module for device after device (StandardTrainer.reuses_model): each update is the
    one a fresh module gives, and an update handed back is not changed by the next training."""
    run = run_context(resolved_config("scenario=vehicle_fleet", "scenario.num_devices=6"))
    arrays = ArrayRecord(fresh_model(run).state_dict())
    runtime._TRAINING_MODELS.clear()
    first, second = updates_in_turn(run, arrays, [0, 1])
    kept = {k: v.copy() for k, v in first.items()}
    updates_in_turn(run, arrays, [2])
    runtime._TRAINING_MODELS.clear()
    (alone,) = updates_in_turn(run, arrays, [1])
    for key in alone:
        np.testing.assert_array_equal(second[key], alone[key])
        np.testing.assert_array_equal(first[key], kept[key])
    assert any(not np.array_equal(first[k], second[k]) for k in first)


def test_the_model_factory_is_a_plain_partial_of_the_model_class():
    cfg = resolved_config("scenario=vehicle_fleet")
    factory = model_factory(cfg.scenario.model)
    assert type(factory) is functools.partial
    assert factory.func.__name__ == "Mlp"


def test_a_device_that_never_kept_state_writes_no_snapshot_and_an_emptied_one_does(tmp_path):
    store = DeviceStateStore(tmp_path)
    store.save(3, 1, RecordDict())
    assert not (tmp_path / "device-3").exists()
    assert store.load(3, 2) is None
    store.save(4, 1, RecordDict({"c": ConfigRecord({"x": 1})}))
    store.save(4, 2, RecordDict())  # the device emptied its state: that must be kept too
    assert store.load(4, 3) is not None and len(store.load(4, 3)) == 0


def test_the_converted_global_model_is_used_again_only_for_the_same_arrays():
    run = run_context(resolved_config("scenario=vehicle_fleet", "scenario.num_devices=6"))
    arrays = ArrayRecord(fresh_model(run).state_dict())
    first = runtime.torch_state_of(arrays)
    assert runtime.torch_state_of(arrays) is first
    key = next(iter(arrays))
    arrays[key] = ArrayRecord({key: first[key] + 1.0})[key]  # the same record, changed
    changed = runtime.torch_state_of(arrays)
    assert changed is not first
    np.testing.assert_array_equal(changed[key].numpy(), first[key].numpy() + 1.0)


def test_a_standard_reply_carries_no_empty_trainer_record_and_only_the_device_id():
    """Each record costs ~150 bytes on the wire: nothing empty, nothing the server knows."""
    cfg = resolved_config("scenario=vehicle_fleet", "scenario.num_devices=6")
    run = run_context(cfg)
    content = RecordDict(
        {
            "arrays": ArrayRecord(fresh_model(run).state_dict()),
            "config": ConfigRecord({"server-round": 1}),
        }
    )

    reply = runtime.train_on_device(cfg, 2, content, RecordDict())

    assert set(reply.keys()) == {"arrays", "metrics", "device"}
    assert dict(reply["device"]) == {"device-id": 2}


def test_numpy_arrays_are_byte_for_byte_flowers_whatever_the_layout():
    from flwr.app import Array

    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((3, 4)).astype(np.float32),
        rng.standard_normal(7),
        np.array(5, dtype=np.int64),  # BatchNorm's num_batches_tracked: 0-d
        np.arange(6, dtype=np.int16).reshape(2, 3),
        np.zeros((0, 3), dtype=np.float32),
        rng.standard_normal((4, 3)).astype(np.float32).T,  # not C-ordered: Flower's own path
        np.array([True, False]),
    ]
    for ndarray in [*arrays, *arrays]:  # the second time from the kept header
        ours, flowers = runtime.numpy_array(ndarray), Array(ndarray)
        assert (ours.dtype, ours.shape, ours.stype, ours.data) == (
            flowers.dtype,
            flowers.shape,
            flowers.stype,
            flowers.data,
        )
        np.testing.assert_array_equal(ours.numpy(), ndarray)


def test_the_reused_module_holds_exactly_the_model_it_was_last_given():
    run = run_context(resolved_config("scenario=vehicle_fleet", "scenario.num_devices=6"))
    runtime._TRAINING_MODELS.clear()
    first = ArrayRecord(fresh_model(run).state_dict())
    second = ArrayRecord({k: runtime.numpy_array(v.numpy() + 1) for k, v in first.items()})
    trainer = run.device_classes[run.federation[0].device_class].trainer
    runtime.training_model(run, first, trainer)
    model = runtime.training_model(run, second, trainer)
    for key, tensor in model.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), second[key].numpy())
