"""The samples a device trains and evaluates on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabeledData:
    """Samples and their integer class labels.

    Attributes
    ----------
    x : np.ndarray
        ``float32`` features, shape ``(n, *input_shape)``.
    y : np.ndarray
        ``int64`` class indices, shape ``(n,)``.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} samples but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> LabeledData:
        """Return the samples at ``index``."""
        return LabeledData(self.x[index], self.y[index])
