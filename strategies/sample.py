"""The seeded sample of coordinates that the per-round statistics look at.

Medians over ``n`` devices on ``k`` sampled coordinates cost O(n·k), however large the model;
the draw depends on the run's seed and the round only, so every strategy instance of a run
samples the same coordinates and no device knows them before it sends its update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strategies.arrays import ArraySpec, ModelSpec

_GATHER_BLOCK = 64  # updates gathered per block before the transpose into the (k, n) matrix
_TILE = 256  # coordinates per transposed tile (64 × 256 float32 = 64 KiB)


@dataclass(frozen=True)
class SamplePlan:
    """Which coordinates of the floating-point arrays the per-round statistics look at."""

    parts: tuple[tuple[str, np.ndarray, slice], ...]
    size: int

    @classmethod
    def draw(cls, spec: ModelSpec, size: int, seed: int, server_round: int) -> SamplePlan:
        """Draw ``size`` distinct coordinates (all of them if the model is smaller).

        The draw depends on ``seed`` and the round only, so every strategy instance of a run
        samples the same coordinates, and an attacker cannot know them in advance.
        """
        return cls._over(spec.float_arrays, size, [seed, server_round])

    @classmethod
    def output_layer(
        cls, spec: ModelSpec, size: int, seed: int, server_round: int
    ) -> SamplePlan | None:
        """Up to ``size`` coordinates of the output layer: the last 2-D float array and after.

        For a classifier that is the last ``Linear``'s weight and bias, where a label flip shows
        most (Tolpegin et al., ESORICS'20, find the flipped classes' output neurons); in the
        whole-model sample those few coordinates are drowned. All of them when the layer is
        small, else a seeded draw, as in :meth:`draw`. ``None`` when no float array is 2-D.
        """
        floats = spec.float_arrays
        last = max((i for i, a in enumerate(floats) if len(a.shape) == 2), default=None)
        if last is None:
            return None
        return cls._over(floats[last:], size, [seed, server_round, 1])

    @classmethod
    def _over(cls, arrays: Sequence[ArraySpec], size: int, seed: list[int]) -> SamplePlan:
        """``size`` distinct coordinates of ``arrays`` drawn with ``seed`` (all if fewer)."""
        total = sum(a.size for a in arrays)
        if total <= size:
            chosen = np.arange(total, dtype=np.int64)
        else:
            rng = np.random.default_rng(seed)
            chosen = np.sort(rng.choice(total, size=size, replace=False))
        parts: list[tuple[str, np.ndarray, slice]] = []
        offset = pos = 0
        for arr in arrays:
            lo = int(np.searchsorted(chosen, offset))
            hi = int(np.searchsorted(chosen, offset + arr.size))
            if hi > lo:
                parts.append((arr.key, chosen[lo:hi] - offset, slice(pos, pos + hi - lo)))
                pos += hi - lo
            offset += arr.size
        return cls(tuple(parts), pos)


def gather_sample(
    updates: Sequence[dict[str, np.ndarray]], spec: ModelSpec, plan: SamplePlan
) -> np.ndarray:
    """The sampled coordinates of every update ``x_i - g``, as a ``(k, n)`` float32 matrix.

    One column per update: the robust statistics take medians over devices, i.e. along rows,
    which is fast on contiguous memory (see :func:`~strategies.robust.row_median`).
    """
    n = len(updates)
    out = np.empty((plan.size, n), dtype=np.float32)
    # Gather a block of updates row-wise, then transpose it into place tile by tile: writing one
    # column at a time, or transposing whole rows, touches a new cache line per coordinate.
    block = np.empty((min(n, _GATHER_BLOCK), plan.size), dtype=np.float32)
    for first in range(0, n, _GATHER_BLOCK):
        chunk = updates[first : first + _GATHER_BLOCK]
        m = len(chunk)
        for j, update in enumerate(chunk):
            for key, idx, cols in plan.parts:
                block[j, cols] = update[key][idx]
        for c in range(0, plan.size, _TILE):
            out[c : c + _TILE, first : first + m] = block[:m, c : c + _TILE].T
    if spec.global_views is not None:
        for key, idx, rows in plan.parts:
            out[rows] -= spec.global_views[key][idx].astype(np.float32)[:, None]
    return out
