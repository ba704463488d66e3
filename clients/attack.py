"""The simulated-attack contract (simulation only).

An attack turns an attacker device's honest behaviour into a malicious one. It may poison the local
training data before training (label flipping) and the update after training (sign flip, noise,
scaling, lying about the sample count). The ClientApp applies the attack of ``cfg.attack`` on the
devices the seed chose as attackers; honest devices never see it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl_iot.data.base import LabeledData
from fl_iot.registry import Registry


@dataclass
class AttackedUpdate:
    """What an attacker sends instead of its honest update."""

    arrays: dict[str, np.ndarray]
    num_examples: int


class Attack:
    """Base attack: behaves honestly. Subclasses override one or both hooks."""

    def __init__(self, **options: object) -> None:
        self.options = options

    def poison_data(
        self, data: LabeledData, num_classes: int, rng: np.random.Generator
    ) -> LabeledData:
        """Return the data the attacker trains on (default: unchanged)."""
        return data

    def poison_update(
        self,
        global_arrays: dict[str, np.ndarray],
        local_arrays: dict[str, np.ndarray],
        num_examples: int,
        rng: np.random.Generator,
    ) -> AttackedUpdate:
        """Return the update the attacker sends (default: the honest one)."""
        return AttackedUpdate(local_arrays, num_examples)


ATTACKS: Registry[type[Attack]] = Registry("attack", "fl_iot.attacks")
"""Attack classes by name; ``none`` is honest behaviour."""
ATTACKS.register("none", Attack)
