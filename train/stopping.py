"""Early stopping on validation loss, and the record of which step was best.

The recipe validates once before the first update, so `best` starts at the untrained model's loss:
a run whose updates never help stops after `patience` validations and publishes weights no worse
than where it began. Workers keep identical copies (the loss they feed in is all-reduced), but only
rank 0's verdict is acted on, broadcast to the others, so no worker can leave the loop alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EarlyStopper:
    """Tracks the best validation loss; `patience=None` never stops (but still tracks the best)."""

    patience: int | None
    min_delta: float = 0.0
    best: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def update(self, step: int, val_loss: float) -> bool:
        """Record a validation; True when it beats the best by more than `min_delta` (a new best)."""
        self.history.append((step, val_loss))
        if val_loss < self.best - self.min_delta:  # NaN never improves
            self.best, self.best_step, self.bad_evals = val_loss, step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_step = int(state["best_step"])
        self.bad_evals = int(state["bad_evals"])
        self.history = [(int(step), float(loss)) for step, loss in state["history"]]
