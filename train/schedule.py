"""Learning-rate schedules: linear warm-up, then constant, linear decay or cosine decay to zero.

`lr_factor(step)` is the multiplier of the peak rate for the update that `step` optimizer steps
have already been made before (LambdaLR's convention). Warm-up starts at 1/(warmup+1) of the peak
rather than at zero, so the first update is never wasted on a zero learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

Schedule = Literal["constant", "linear", "cosine"]


def lr_factor(schedule: Schedule, *, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The factor of the peak learning rate for each step, for `torch.optim.lr_scheduler.LambdaLR`."""
    if schedule not in ("constant", "linear", "cosine"):
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor
