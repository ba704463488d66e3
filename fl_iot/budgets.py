"""Pre-flight check that every device class in a scenario can train its model in its memory.

Run once the dataset's input shape is known and before any Ray worker starts, so that a model
that cannot fit a microcontroller fails in seconds, naming the class, the estimate and the limit.
The estimate (``clients.privacy.memory``) counts parameters, gradients, optimiser state,
activations and, for DP-SGD, per-sample gradients; it errs high and ignores the runtime itself.
"""

from __future__ import annotations

from clients.privacy.memory import MemoryEstimate, check_memory_budget
from fl_iot.config import trainer_of
from fl_iot.device_runtime import RunContext, fresh_model


def check_device_memory(run: RunContext) -> dict[str, MemoryEstimate]:
    """Check each device class with a share in the scenario; return the estimates by class.

    Raises
    ------
    clients.privacy.MemoryBudgetError
        For the first class whose estimate exceeds its ``memory_limit_mb``.
    """
    estimates = {}
    model = fresh_model(run)
    for name, share in run.cfg.scenario.device_mix.items():
        if share <= 0:
            continue
        device_class = run.cfg.device_classes[name]
        estimates[name] = check_memory_budget(
            name,
            device_class.memory_limit_mb,
            model,
            run.data.info.input_shape,
            device_class.batch_size,
            trainer=trainer_of(run.cfg, name),
            grad_sample_mode=str(device_class.trainer_options.get("grad_sample_mode", "auto")),
            momentum=run.cfg.scenario.optimizer.momentum,
        )
    return estimates
