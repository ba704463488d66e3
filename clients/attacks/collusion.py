"""Colluding attacks (ALIE, IPM) and how colluders share knowledge in a simulation.

Threat model
------------
The attackers of a run collude: they share their honest updates, as in Baruch et al. (NeurIPS
2019), where "the corrupted workers use their own correct gradients" to estimate the benign
distribution, and Xie et al. (UAI 2019). They do not see the honest devices' updates, do not know
which devices the server sampled this round, and do not know the aggregation rule. What they know
is the round, the global model, and the federation (who the colluders are, their data partitions,
device classes and per-device seeds), which is all public to an attacker inside a simulation.

How collusion is simulated
--------------------------
Every ClientApp runs on its own (in Ray actors), so colluders cannot exchange messages. Instead an
attacker *reconstructs* the honest update of every colluder of the federation: the runtime hands it
``AttackContext.honest_update_of(j)``, which runs device ``j``'s honest local training from the
received global model with ``j``'s data, settings and seed, with a fresh trainer state (so every
colluder reconstructs exactly the same thing, wherever it runs). All colluders then derive the same
statistics and send the same crafted update, as they would after talking to each other.

Cost: the reconstructions are cached in-process per (run, round, global-model digest), so the
first attacker a Ray worker serves in a round pays ``k`` local trainings (``k`` = colluders in the
federation, sampled this round or not), and every later attacker on that worker only its own
training, for the honest metrics of its reply. With ``w`` workers: at most ``w * k`` extra
trainings per round, in the workers' time, nothing on the server. The cache keeps the last
:data:`CACHE_ROUNDS` entries (``k`` model copies each).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from statistics import NormalDist

import numpy as np

from clients.attacks.base import (
    ATTACKS,
    Arrays,
    Attack,
    AttackContext,
    AttackedUpdate,
    apply_deltas,
    deltas,
    real_option,
)

CACHE_ROUNDS = 2
"""Cached rounds per process: the current one, and the previous one for stragglers."""


def model_digest(arrays: Arrays) -> str:
    """A digest of a model's arrays (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class CollusionCache:
    """The colluders' honest updates per (run, round, global model), shared within a process.

    Attributes
    ----------
    misses : int
        Entries computed so far (each costs one local training per colluder).
    hits : int
        Look-ups served from the cache.
    """

    def __init__(self, max_entries: int = CACHE_ROUNDS) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, list[Arrays]] = OrderedDict()
        # Ray runs one task per actor at a time; the lock guards threaded callers all the same.
        self._lock = threading.Lock()
        self.misses = 0
        self.hits = 0

    def get(self, key: Hashable, compute: Callable[[], list[Arrays]]) -> list[Arrays]:
        """Return the entry for ``key``, computing it on a miss."""
        with self._lock:
            if key in self._entries:
                self.hits += 1
                self._entries.move_to_end(key)
                return self._entries[key]
            self.misses += 1
            entry = compute()
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return entry

    def clear(self) -> None:
        """Drop every entry and reset the counters (tests use it to stand for a fresh worker)."""
        with self._lock:
            self._entries.clear()
            self.misses = self.hits = 0


COLLUSION_CACHE = CollusionCache()
"""The process-wide cache every colluding attack reads through."""


def colluder_updates(context: AttackContext, global_arrays: Arrays) -> list[Arrays]:
    """The honest updates ``local - global`` of every colluder, in colluder-id order.

    Computed once per (run, round, global model) in this process; see the module docstring.
    """
    key = (context.run_key, context.server_round, model_digest(global_arrays), context.colluders)

    def compute() -> list[Arrays]:
        return [
            deltas(global_arrays, context.honest_update_of(device_id))
            for device_id in context.colluders
        ]

    return COLLUSION_CACHE.get(key, compute)


def _stack(updates: Sequence[Arrays], key: str) -> np.ndarray:
    return np.stack([np.asarray(u[key], dtype=np.float64) for u in updates])


def alie_z(num_sampled: int, num_attackers: int) -> float:
    """ALIE's ``z_max`` for ``n`` aggregated updates of which ``f`` are the attackers'.

    Baruch et al. (NeurIPS 2019): ``s = floor(n / 2 + 1) - f`` honest workers must
    side with the attackers for a majority, and ``z_max = Phi^-1((n - s) / n)``. When attackers
    already hold a majority (``s <= 0``) the formula gives ``z = inf``; ``s`` is clamped to
    ``[1, n - 1]`` so that ``z`` stays finite (the largest finite value of the formula).

    Raises
    ------
    ValueError
        If ``n < 1`` or ``f`` is not in ``[0, n]``.
    """
    n, f = num_sampled, num_attackers
    if n < 1 or not 0 <= f <= n:
        raise ValueError(f"ALIE needs n >= 1 and 0 <= f <= n, got n={n}, f={f}")
    if n == 1:
        return 0.0
    s = min(max(math.floor(n / 2 + 1) - f, 1), n - 1)
    return NormalDist().inv_cdf((n - s) / n)


def alie_update(updates: Sequence[Arrays], z: float) -> Arrays:
    """``mu - z * sigma`` per coordinate over ``updates`` (Baruch et al., NeurIPS 2019).

    ``sigma`` is the sample standard deviation (``ddof=1``), an unbiased estimate of the benign
    spread from the colluders' few updates; a single colluder has no spread (``sigma = 0``) and
    sends its honest update.
    """
    if not updates:
        raise ValueError("ALIE needs at least one colluder update")
    ddof = 1 if len(updates) > 1 else 0
    out: Arrays = {}
    for key in updates[0]:
        stacked = _stack(updates, key)
        out[key] = stacked.mean(axis=0) - z * stacked.std(axis=0, ddof=ddof)
    return out


def ipm_update(updates: Sequence[Arrays], epsilon: float) -> Arrays:
    """``-epsilon * mu`` per coordinate over ``updates`` (Xie et al., UAI 2019)."""
    if not updates:
        raise ValueError("IPM needs at least one colluder update")
    return {key: -epsilon * _stack(updates, key).mean(axis=0) for key in updates[0]}


def _require_context(attack: str, context: AttackContext | None) -> AttackContext:
    if context is None:
        raise ValueError(
            f"attack {attack!r} colludes: poison_update needs the AttackContext of the round"
        )
    return context


@ATTACKS.decorator("alie")
class Alie(Attack):
    """ALIE ("A Little Is Enough"): every colluder sends ``mu - z * sigma`` of benign updates.

    Baruch, Baruch and Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed
    Learning", NeurIPS 2019. The colluders estimate the per-coordinate mean ``mu`` and standard
    deviation ``sigma`` of benign updates from their own honest updates and all send the same
    update, shifted by ``z`` standard deviations: small enough to stay inside the spread that
    median, trimmed mean and Krum accept, consistent enough to drag the aggregate every round.
    ``z`` follows the paper's ``z_max`` (:func:`alie_z`) from ``n`` = devices aggregated per round
    and ``f`` = attackers expected among them (at least 1, the attacker itself).

    Parameters
    ----------
    z : float or None, default None
        Overrides the paper's ``z_max`` (any finite number).
    """

    colluding = True

    def __init__(self, z: float | None = None) -> None:
        self.z = None if z is None else real_option("alie", "z", z, positive=False)

    def z_for(self, context: AttackContext) -> float:
        """The ``z`` used in ``context``: the option, or the paper's ``z_max(n, f)``."""
        if self.z is not None:
            return self.z
        n = max(1, context.num_sampled)
        return alie_z(n, min(max(1, context.num_attackers), n))

    def poison_update(
        self,
        global_arrays: Arrays,
        local_arrays: Arrays,
        num_examples: int,
        rng: np.random.Generator,
        context: AttackContext | None = None,
    ) -> AttackedUpdate:
        """Send ``global + mu - z * sigma`` over the colluders' honest updates."""
        context = _require_context("alie", context)
        crafted = alie_update(colluder_updates(context, global_arrays), self.z_for(context))
        return AttackedUpdate(apply_deltas(global_arrays, local_arrays, crafted), num_examples)


@ATTACKS.decorator("ipm")
class Ipm(Attack):
    """Inner-product manipulation: every colluder sends ``-epsilon * mu``.

    Xie, Koyejo and Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
    Manipulation", UAI 2019. With ``mu`` the mean of the benign updates (here: of the colluders'
    honest updates), the colluders make the aggregate's inner product with the true descent
    direction negative. The paper's regimes: a small ``epsilon`` (0.1) defeats coordinate median
    and Krum, whose selected update is pulled to the attackers' side; a large one (100) defeats
    the mean.

    Parameters
    ----------
    epsilon : float, default 0.1
        Length of the reversed mean (> 0).
    """

    colluding = True

    def __init__(self, epsilon: float = 0.1) -> None:
        self.epsilon = real_option("ipm", "epsilon", epsilon)

    def poison_update(
        self,
        global_arrays: Arrays,
        local_arrays: Arrays,
        num_examples: int,
        rng: np.random.Generator,
        context: AttackContext | None = None,
    ) -> AttackedUpdate:
        """Send ``global - epsilon * mu`` over the colluders' honest updates."""
        context = _require_context("ipm", context)
        crafted = ipm_update(colluder_updates(context, global_arrays), self.epsilon)
        return AttackedUpdate(apply_deltas(global_arrays, local_arrays, crafted), num_examples)


__all__ = [
    "COLLUSION_CACHE",
    "Alie",
    "CollusionCache",
    "Ipm",
    "alie_update",
    "alie_z",
    "colluder_updates",
    "ipm_update",
    "model_digest",
]
