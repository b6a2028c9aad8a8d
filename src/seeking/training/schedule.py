"""Learning-rate schedules as plain functions of the global step (both models follow one clock)."""

from __future__ import annotations

import math


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total`` steps.

    ``cosine``: linear warmup over ``warmup`` steps, then cosine decay to 0. ``onecycle``: warmup
    over 30% of the run from 1/25 of the peak, then cosine decay to 0. ``constant``: warmup, then 1.
    """
    if schedule == "onecycle":
        warmup = max(1, int(0.3 * total))
        if step < warmup:
            return 0.04 + 0.96 * step / warmup
    elif step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
