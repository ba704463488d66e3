"""Client plugins: local trainers per IoT device class, and client-side transforms (attacks)."""

from clients.attack import ATTACKS, Attack, AttackedUpdate
from clients.trainer import TRAINERS, LocalTrainer, StandardTrainer, TrainReport, TrainSettings

__all__ = [
    "ATTACKS",
    "TRAINERS",
    "Attack",
    "AttackedUpdate",
    "LocalTrainer",
    "StandardTrainer",
    "TrainReport",
    "TrainSettings",
]
