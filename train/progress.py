"""Progress of a training run: the lines workers print, and the events the registry keeps.

Lines: rank 0 prints one line per report (`ray job logs` shows them, prefixed by Ray with the
worker's pid), e.g. `[job] step 40/120 epoch 1.33 loss 2.3141 lr 1.00e-04 tokens/s 5321`, and at
validations `val_loss 2.2801 best 2.2801@40`. They are written to stdout directly: Ray Train
replaces `print` in workers with a logger that, where stdout is wrapped, also prints, so a plain
`print` shows every line twice.

Events: `RegistryEvents` runs in the Ray Train controller (callbacks run there, not in workers) and
records one registry event per validation, resumption and early stop: milestones at the rate a
reader of `tuneloop adapters history` wants, not one row per optimizer step.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from ray.train import UserCallback

if TYPE_CHECKING:
    from ray.train import Checkpoint

    from tuneloop.platform.registry import Registry

log = logging.getLogger(__name__)


def quiet_worker_logs() -> None:
    """Keep a worker's part of the job log to progress lines and real warnings.

    Ray Train 2.60 logs every report at INFO under a logger named by its source file path rather
    than `ray.train`, out of reach of `LoggingConfig`, and transformers draws a progress bar for
    every model it loads; both would bury the progress lines.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    for name in list(logging.root.manager.loggerDict):
        if name.endswith("ray/train/v2/_internal/execution/context.py"):
            logging.getLogger(name).setLevel(logging.WARNING)


def emit(line: str) -> None:
    """Write one progress line to stdout now (see the module docstring for why not `print`)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def progress_line(tag: str, metrics: dict[str, Any]) -> str:
    """One human-readable line for a report's metrics."""
    parts = [
        f"[{tag}] step {metrics['step']}/{metrics['total_steps']}",
        f"epoch {metrics['epoch']:.2f}",
        f"loss {metrics['loss']:.4f}",
        f"lr {metrics['lr']:.2e}",
        f"tokens/s {metrics['tokens_per_s']:.0f}",
    ]
    if metrics.get("evaluated"):
        parts.append(
            f"val_loss {metrics['val_loss']:.4f} best {metrics['best_val_loss']:.4f}@{metrics['best_step']}"
        )
    if metrics.get("stopped_early"):
        parts.append("early stop: no improvement")
    return " ".join(parts)


class RegistryEvents(UserCallback):
    """Record a run's validations, resumptions and early stop as events of its registry job.

    Best effort: a registry that cannot be written to is logged, never fails the training.
    """

    def __init__(self, registry_url: str, job_id: str, tag: str) -> None:
        self.registry_url = registry_url
        self.job_id = job_id
        self.tag = tag
        self._registry: Registry | None = None
        self._restarts = 0

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None
    ) -> None:
        if not metrics:
            return
        latest = metrics[0]  # rank 0's
        detail = {k: v for k, v in latest.items() if isinstance(v, int | float | str | bool)}
        if latest.get("restarts", 0) > self._restarts:
            self._restarts = latest["restarts"]
            self._record(
                "job.resumed",
                f"{self.tag}: resumed from the checkpoint at step {latest['resumed_from_step']} after a "
                f"worker failure (restart {self._restarts})",
                detail,
            )
        if latest.get("evaluated"):
            self._record("job.validation", progress_line(self.tag, latest), detail)
        if latest.get("stopped_early"):
            self._record(
                "job.early_stopped",
                f"{self.tag}: stopped early at step {latest['step']}: val_loss has not improved since "
                f"step {latest['best_step']}",
                detail,
            )

    def _record(self, kind: str, message: str, detail: dict[str, Any]) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        from tuneloop.platform.errors import TuneloopError
        from tuneloop.platform.registry import Registry

        try:
            if self._registry is None:
                self._registry = Registry(self.registry_url)
            self._registry.add_job_event(self.job_id, kind, message, detail)
        except (SQLAlchemyError, TuneloopError) as exc:
            log.warning("could not record %s for job %s in the registry: %s", kind, self.job_id, exc)
