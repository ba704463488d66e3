"""How rounds tolerate an unreliable fleet: the ``rounds`` config group and its pure rules.

Three modes, all driven by the one round loop (:mod:`fl_iot.round_loop`) on the simulated clock:

``sync``
    Today's rounds: the strategy's sample is asked, and the round closes when every asked
    device has answered, or ``timeout_s`` after it opened when one went quiet (a broken
    transfer, a device gone offline: the server cannot tell it from a slow one).
``deadline``
    The round closes at ``deadline_s`` or as soon as ``target_replies`` updates are in. The server
    asks ``over_selection`` times that many (Bonawitz et al. 2019 ask 130 %), replacing sampled
    devices found offline from the available pool. Updates that arrive after the close are
    dropped (``late_updates: drop``) or used in the next round that closes after they arrive
    (``stale``), weighted by their staleness.
``fedbuff``
    Buffered asynchronous aggregation (Nguyen et al., AISTATS 2022): ``concurrency`` devices
    (``None``: every available device) train at once, each on the model version it received;
    the server aggregates as soon as ``buffer_size`` updates are in (``None``: the strategy's
    sample size, a sync round's worth), weighting each by its staleness, and hands the new model
    to the next devices. A "round" is one aggregation.

A stale update (trained on the model of round ``r - s``) is re-based before any strategy sees it:
``current + (update - model_{r-s})``, so every strategy, ``trusted`` included, judges and averages
updates as if all had started from the current model. Its example count, the weight of Flower's
averaging and of fl-iot's strategies, is multiplied by :func:`staleness_weight`; an update staler
than ``max_staleness`` is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class RoundMode(StrEnum):
    """The ``rounds.mode`` values."""

    SYNC = "sync"
    DEADLINE = "deadline"
    FEDBUFF = "fedbuff"


class LateUpdates(StrEnum):
    """What a deadline round does with updates that arrive after it closed."""

    DROP = "drop"
    STALE = "stale"


class PartialUpdates(StrEnum):
    """What the server does with the partial update of a device that went offline mid-training.

    ``use``: the device offers it (staleness-weighted) when it is next asked; ``drop``: the
    device discards it and trains afresh.
    """

    USE = "use"
    DROP = "drop"


@dataclass
class RoundsConfig:
    """The ``rounds`` config group (each option's YAML documents the fields it uses)."""

    mode: str = RoundMode.SYNC.value
    timeout_s: float = 600.0
    deadline_s: float = 120.0
    target_replies: int | None = None
    over_selection: float = 1.3
    late_updates: str = LateUpdates.DROP.value
    partial_updates: str = PartialUpdates.DROP.value
    max_staleness: int = 4
    staleness_exponent: float = 0.5
    concurrency: int | None = None
    buffer_size: int | None = None
    max_wait_s: float = 7 * 86_400.0


def staleness_weight(staleness: int, exponent: float) -> float:
    """``(1 + s)^-exponent``: FedBuff's polynomial staleness discount (1 for a fresh update).

    Examples
    --------
    >>> staleness_weight(0, 0.5), staleness_weight(3, 0.5)
    (1.0, 0.5)
    """
    return float((1.0 + staleness) ** -exponent)


def over_selected(target: int, over_selection: float) -> int:
    """Devices to ask so that ``target`` answer: ``ceil(target · over_selection)``.

    Examples
    --------
    >>> over_selected(10, 1.3)
    13
    """
    return max(target, math.ceil(target * over_selection - 1e-9))


def close_time(
    opened_s: float,
    arrivals: Sequence[float],
    quiet: bool,
    mode: RoundMode,
    config: RoundsConfig,
    target: int,
) -> float:
    """When a round that opened at ``opened_s`` closes, in simulated seconds.

    ``arrivals`` are the simulated arrival times of the updates it may use (sorted or not);
    ``quiet`` says whether an asked device went quiet (the server waits for it until the timeout
    or deadline, as it cannot know). ``target`` is the number of updates a deadline or FedBuff
    round waits for.

    Examples
    --------
    >>> cfg = RoundsConfig(timeout_s=600.0, deadline_s=60.0)
    >>> close_time(0.0, [5.0, 9.0], False, RoundMode.SYNC, cfg, 2)
    9.0
    >>> close_time(0.0, [5.0, 9.0], True, RoundMode.SYNC, cfg, 2)
    600.0
    >>> close_time(0.0, [5.0, 9.0, 70.0], True, RoundMode.DEADLINE, cfg, 3)
    60.0
    >>> close_time(0.0, [9.0, 5.0, 70.0], False, RoundMode.FEDBUFF, cfg, 2)
    9.0
    """
    ordered = sorted(arrivals)
    last = ordered[-1] if ordered else opened_s
    if mode == RoundMode.SYNC:
        return opened_s + config.timeout_s if quiet else max(opened_s, last)
    if mode == RoundMode.DEADLINE:
        deadline = opened_s + config.deadline_s
        if len(ordered) >= target:
            return min(deadline, ordered[target - 1])
        return deadline if quiet else min(deadline, max(opened_s, last))
    # FedBuff: the buffer fills with the target-th arrival; with fewer in flight, the last one.
    return ordered[target - 1] if len(ordered) >= target else max(opened_s, last)
