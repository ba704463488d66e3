"""The simulated-attack contract (simulation only).

An attack turns an attacker device's honest behaviour into a malicious one through two hooks that
the device runtime (:func:`fl_iot.device_runtime.train_on_device`) calls on the devices the seed
chose as attackers; honest devices never see an attack:

- :meth:`Attack.poison_data` before local training (data poisoning: label flipping);
- :meth:`Attack.poison_update` after local training (model poisoning: sign flip, noise, scaling,
  lying about the sample count, and the colluding ALIE and IPM attacks, which read the honest
  updates of every colluder through :class:`AttackContext`).

Attacks are registered by name in :data:`ATTACKS` (entry-point group ``fl_iot.attacks``) and built
from ``cfg.attack.options`` by :func:`build_attack`, which rejects unknown options and bad values
with a :class:`~clients.errors.ConfigError` naming them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from clients.data import LabeledData
from clients.errors import ConfigError
from clients.registry import Registry

Arrays = dict[str, np.ndarray]
"""A model as named numpy arrays (state-dict keys)."""


@dataclass
class AttackedUpdate:
    """What an attacker sends instead of its honest update.

    Attributes
    ----------
    arrays : dict of str to np.ndarray
        The model weights sent to the server (same keys, shapes and dtypes as the global model).
    num_examples : int
        The sample count the device reports (FedAvg's weight).
    """

    arrays: Arrays
    num_examples: int


@dataclass(frozen=True)
class AttackContext:
    """What an attacker knows about the federation in this round, beyond its own update.

    Attributes
    ----------
    device_id : int
        The attacking device.
    server_round : int
        The current round.
    colluders : tuple of int
        Ids of every attacker device of the federation, sorted (the attacker itself included).
    num_sampled : int
        Devices the server aggregates per round (``n`` in ALIE's formula).
    num_attackers : int
        Attackers expected among them (``f`` in ALIE's formula, Krum's ``f``).
    run_key : str
        Identifies the run (a digest of its config); keys in-process caches with the round.
    honest_update_of : callable
        ``honest_update_of(device_id)`` trains device ``device_id``'s honest update of this round
        from the same global model, without sending anything; what colluders reconstruct.
    """

    device_id: int
    server_round: int
    colluders: tuple[int, ...]
    num_sampled: int
    num_attackers: int
    run_key: str
    honest_update_of: Callable[[int], Arrays]


class Attack:
    """Base attack: behaves honestly. Subclasses override one or both hooks.

    Options are the keyword arguments of a subclass's ``__init__``; :meth:`from_options` checks
    their names, and each ``__init__`` checks their values.
    """

    colluding: ClassVar[bool] = False
    """True for attacks that need the honest updates of every colluder (ALIE, IPM)."""

    def poison_data(
        self, data: LabeledData, num_classes: int, rng: np.random.Generator
    ) -> LabeledData:
        """Return the data the attacker trains on (default: unchanged)."""
        return data

    def poison_update(
        self,
        global_arrays: Arrays,
        local_arrays: Arrays,
        num_examples: int,
        rng: np.random.Generator,
        context: AttackContext | None = None,
    ) -> AttackedUpdate:
        """Return the update the attacker sends (default: the honest one).

        Parameters
        ----------
        global_arrays : dict of str to np.ndarray
            The global model the round started from.
        local_arrays : dict of str to np.ndarray
            The attacker's honestly trained model.
        num_examples : int
            The attacker's true local sample count.
        rng : np.random.Generator
            Seeded per device and round.
        context : AttackContext or None
            The federation view; ``None`` outside a run (unit tests). Colluding attacks need it.
        """
        return AttackedUpdate(local_arrays, num_examples)

    @classmethod
    def option_names(cls) -> list[str]:
        """The options this attack accepts (its ``__init__`` keyword arguments)."""
        parameters = inspect.signature(cls.__init__).parameters
        return sorted(
            name
            for name, p in parameters.items()
            if name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        )

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> Attack:
        """Build the attack from ``cfg.attack.options``, rejecting unknown option names.

        Raises
        ------
        ConfigError
            Naming the unknown option and the valid ones, or (from ``__init__``) the bad value.
        """
        valid = cls.option_names()
        for key in options:
            if key not in valid:
                raise ConfigError(
                    f"unknown option {key!r} for attack {name!r} (attack.options.{key}); "
                    f"valid options: {', '.join(valid) or '(none)'}"
                )
        return cls(**options)


ATTACKS: Registry[type[Attack]] = Registry("attack", "fl_iot.attacks")
"""Attack classes by name; ``none`` is honest behaviour."""
ATTACKS.register("none", Attack)


def build_attack(name: str, options: Mapping[str, Any] | None = None) -> Attack:
    """The attack registered as ``name``, built from ``options``.

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered (the message lists the valid names).
    ConfigError
        If an option is unknown or has a bad value.
    """
    return ATTACKS.get(name).from_options(name, dict(options or {}))


# ---- option checks shared by the attacks ----------------------------------------------------


def real_option(attack: str, key: str, value: object, *, positive: bool = True) -> float:
    """``value`` as a finite float (positive unless told otherwise), or a ConfigError naming it."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and positive:
        ok = float(value) > 0  # type: ignore[arg-type]
    if not ok:
        need = "a finite number > 0" if positive else "a finite number"
        raise ConfigError(f"attack {attack!r}: option {key} must be {need}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


# ---- array helpers: attacks move float weights only -------------------------------------------


def is_float(array: np.ndarray) -> bool:
    """Whether ``array`` holds weights an attack may change.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are counters, not weights: attacks send
    them as the honest model has them.
    """
    return np.issubdtype(np.asarray(array).dtype, np.floating)


def deltas(global_arrays: Arrays, local_arrays: Arrays) -> Arrays:
    """The update ``local - global`` of every float array (in float64, for exact arithmetic)."""
    return {
        key: np.asarray(local, dtype=np.float64) - np.asarray(global_arrays[key], dtype=np.float64)
        for key, local in local_arrays.items()
        if is_float(local)
    }


def apply_deltas(global_arrays: Arrays, local_arrays: Arrays, update: Arrays) -> Arrays:
    """``global + update`` for the float arrays in ``update``, the local value for the rest.

    Keys, order, shapes and dtypes follow ``local_arrays``, so the reply stays well-formed.
    """
    out: Arrays = {}
    for key, local in local_arrays.items():
        if key in update:
            crafted = np.asarray(global_arrays[key], dtype=np.float64) + update[key]
            out[key] = crafted.astype(np.asarray(local).dtype)
        else:
            out[key] = local
    return out
