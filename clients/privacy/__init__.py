"""Differential-privacy support for fl-iot devices.

Privacy profiles, accounting (Opacus RDP, dp-accounting RDP and PLD, central DP), the per-device
privacy ledger kept in Flower's ``context.state``, the choice of Opacus grad-sample mode, and
training-memory estimates.
"""

from clients.privacy.accounting import (
    RDP_ORDERS,
    DpSgdEvent,
    calibrate_noise_multiplier,
    central_dp_epsilon,
    dp_event,
    epsilon_opacus_rdp,
    epsilon_pld,
    epsilon_rdp,
    validate_history,
)
from clients.privacy.grad_sample import GHOST_MIN_PARAMS, GRAD_SAMPLE_MODES, choose_grad_sample_mode
from clients.privacy.ledger import LEDGER_KEY, PrivacyLedger
from clients.privacy.memory import (
    MemoryBudgetError,
    MemoryEstimate,
    check_memory_budget,
    estimate_training_memory,
)
from clients.privacy.profile import PrivacyProfile
from clients.privacy.reporting import privacy_summary

__all__ = [
    "GHOST_MIN_PARAMS",
    "GRAD_SAMPLE_MODES",
    "LEDGER_KEY",
    "RDP_ORDERS",
    "DpSgdEvent",
    "MemoryBudgetError",
    "MemoryEstimate",
    "PrivacyLedger",
    "PrivacyProfile",
    "calibrate_noise_multiplier",
    "central_dp_epsilon",
    "check_memory_budget",
    "choose_grad_sample_mode",
    "dp_event",
    "epsilon_opacus_rdp",
    "epsilon_pld",
    "epsilon_rdp",
    "estimate_training_memory",
    "privacy_summary",
    "validate_history",
]
