"""Client plugins: local trainers per IoT device class, and client-side transforms (attacks)."""

from clients import dp_trainer as _dp_trainer  # noqa: F401  (registers "dp-sgd")
from clients.attacks import ATTACKS, Attack, AttackContext, AttackedUpdate, build_attack
from clients.trainer import TRAINERS, LocalTrainer, StandardTrainer, TrainReport, TrainSettings

__all__ = [
    "ATTACKS",
    "TRAINERS",
    "Attack",
    "AttackContext",
    "AttackedUpdate",
    "LocalTrainer",
    "StandardTrainer",
    "TrainReport",
    "TrainSettings",
    "build_attack",
]
