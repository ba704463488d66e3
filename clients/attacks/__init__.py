"""Simulated attacks (simulation only), selected with ``attack=<name> attack.fraction=<f>``.

The seed chooses which devices attack (:func:`fl_iot.federation.choose_attackers`); each attacker
runs the configured attack, honest devices never see it.

Attack (option, default): what the attacker sends.

- ``none``: its honest update.
- ``sign_flip`` (``scale``, 1.0): ``global - scale * (local - global)``.
- ``gaussian`` (``std``, 1.0): ``global + N(0, std^2)`` per coordinate.
- ``scaling`` (``factor``, 10.0): ``global + factor * (local - global)``.
- ``label_flip`` (``mapping``, None = reverse): honest training on labels ``C - 1 - y``.
- ``alie`` (``z``, None = the paper's z_max): ``global + mu - z * sigma`` of the colluders.
- ``ipm`` (``epsilon``, 0.1): ``global - epsilon * mu`` of the colluders.
- ``weight_inflation`` (``factor``, 100.0): its honest update, ``num-examples * factor``.

Hooks, not Flower mods
----------------------
The design makes message-level transforms Flower client mods. Attacks stay hooks that the device
runtime calls inside the train handler (:meth:`Attack.poison_data`, :meth:`Attack.poison_update`),
because a mod would make them worse:

- an attack is a property of a *device*, not of a node: the runtime knows the device, its role and
  the run's config; a mod sees only the message and the node's context, so it would rebuild the
  config and the federation per message, and later, when a gateway node ships many devices'
  updates in one message, a mod could not tell the attackers' updates from the honest ones;
- label flipping must act before training, inside the handler, so a mod design would split the
  attacks over two mechanisms;
- ALIE and IPM need the honest updates of the other colluders, which only the runtime's training
  function can produce (see :mod:`clients.attacks.collusion`);
- wire transforms (compression, masking) remain mods and see the attacked update, as a real
  attacker's update would pass through the same encoder.
"""

from clients.attacks import collusion, data, update
from clients.attacks.base import (
    ATTACKS,
    Arrays,
    Attack,
    AttackContext,
    AttackedUpdate,
    build_attack,
)
from clients.attacks.collusion import (
    COLLUSION_CACHE,
    Alie,
    Ipm,
    alie_update,
    alie_z,
    colluder_updates,
    ipm_update,
)
from clients.attacks.data import LabelFlip
from clients.attacks.update import Gaussian, Scaling, SignFlip, WeightInflation

__all__ = [
    "ATTACKS",
    "COLLUSION_CACHE",
    "Alie",
    "Arrays",
    "Attack",
    "AttackContext",
    "AttackedUpdate",
    "Gaussian",
    "Ipm",
    "LabelFlip",
    "Scaling",
    "SignFlip",
    "WeightInflation",
    "alie_update",
    "alie_z",
    "build_attack",
    "colluder_updates",
    "collusion",
    "data",
    "ipm_update",
    "update",
]
