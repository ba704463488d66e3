"""Data-poisoning attacks: the attacker trains honestly on poisoned local data."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clients.attacks.base import ATTACKS, Attack
from clients.data import LabeledData
from clients.errors import ConfigError


@ATTACKS.decorator("label_flip")
class LabelFlip(Attack):
    """Train on flipped labels: ``y -> num_classes - 1 - y``, or ``y -> mapping[y]``.

    The label-flipping data-poisoning attack (Biggio et al., "Poisoning Attacks against Support
    Vector Machines", ICML 2012; in federated learning Fung et al., "The Limitations of Federated
    Learning in Sybil Settings", RAID 2020, and Tolpegin et al., "Data Poisoning Attacks Against
    Federated Learning Systems", ESORICS 2020). The update is honestly trained, so it looks like a
    benign one from a device with unusual data: the hard case for distance-based defences.

    Only the labels change: features, sample count and sample order stay as they are.

    Parameters
    ----------
    mapping : sequence of int or None, default None
        ``mapping[c]`` is the label every sample of class ``c`` gets, one entry per class.
        ``None`` reverses the classes (``c -> num_classes - 1 - c``; with 2 classes, swaps them).
        A targeted flip maps one source class to a target and keeps the rest, e.g. with 5
        classes ``[0, 0, 2, 3, 4]`` relabels class 1 as 0.
    """

    def __init__(self, mapping: Sequence[int] | None = None) -> None:
        if mapping is not None:
            entries = list(mapping)
            if not entries or not all(
                isinstance(c, int | np.integer) and not isinstance(c, bool) and c >= 0
                for c in entries
            ):
                raise ConfigError(
                    "attack 'label_flip': option mapping must be a non-empty list of class "
                    f"indices >= 0 (mapping[c] = new label of class c), got {mapping!r}"
                )
            self.mapping: list[int] | None = [int(c) for c in entries]
        else:
            self.mapping = None

    def label_map(self, num_classes: int) -> np.ndarray:
        """The new label of each class, as an array of length ``num_classes``."""
        if self.mapping is None:
            return np.arange(num_classes - 1, -1, -1, dtype=np.int64)
        if len(self.mapping) != num_classes or max(self.mapping) >= num_classes:
            raise ConfigError(
                f"attack 'label_flip': option mapping must have one entry per class, each in "
                f"[0, {num_classes - 1}], for this dataset's {num_classes} classes; got "
                f"{self.mapping}"
            )
        return np.asarray(self.mapping, dtype=np.int64)

    def poison_data(
        self, data: LabeledData, num_classes: int, rng: np.random.Generator
    ) -> LabeledData:
        """Return ``data`` with every label mapped through :meth:`label_map` (a new array)."""
        flipped = self.label_map(num_classes)[data.y].astype(data.y.dtype, copy=False)
        return LabeledData(data.x, flipped)
