from collections import Counter

import pytest

from fl_iot.errors import ConfigError
from fl_iot.federation import assign_device_classes, build_federation, choose_attackers


def test_class_counts_follow_the_mix_by_largest_remainder():
    classes = assign_device_classes(10, {"wearable": 0.7, "smartphone": 0.3}, seed=0)

    assert Counter(classes) == {"wearable": 7, "smartphone": 3}


def test_class_counts_round_the_largest_remainders_up():
    # exact shares 3.33 / 3.33 / 3.33 of 10 -> floors 3/3/3, the one left goes to the first
    # largest remainder in name order
    classes = assign_device_classes(10, {"a": 1, "b": 1, "c": 1}, seed=0)

    assert sorted(Counter(classes).values()) == [3, 3, 4]


def test_class_assignment_is_seeded():
    mix = {"wearable": 0.5, "smartphone": 0.5}
    assert assign_device_classes(20, mix, 1) == assign_device_classes(20, mix, 1)
    assert assign_device_classes(20, mix, 1) != assign_device_classes(20, mix, 2)


def test_negative_shares_are_rejected():
    with pytest.raises(ConfigError, match=r"shares must be >= 0"):
        assign_device_classes(4, {"a": -1.0, "b": 2.0}, seed=0)


def test_attacker_count_is_the_rounded_fraction_and_seeded():
    assert len(choose_attackers(47, 0.2, seed=0)) == 9
    assert choose_attackers(47, 0.2, seed=0) == choose_attackers(47, 0.2, seed=0)
    assert choose_attackers(47, 0.2, seed=0) != choose_attackers(47, 0.2, seed=1)
    assert choose_attackers(10, 0.0, seed=0) == frozenset()


def test_more_attackers_than_devices_is_rejected():
    with pytest.raises(ConfigError, match=r"attack.fraction must be in \[0, 1\], got 1.5"):
        choose_attackers(10, 1.5, seed=0)


def test_federation_joins_keys_classes_and_roles():
    federation = build_federation(["p1", "p2", "p3", "p4"], {"wearable": 1.0}, 0.5, seed=3)

    assert [d.natural_key for d in federation.devices] == ["p1", "p2", "p3", "p4"]
    assert federation.class_counts() == {"wearable": 4}
    assert len(federation.attackers) == 2
    assert all(federation[i].attacker == (i in federation.attackers) for i in range(4))
