"""Progress of a training run: the lines workers print, and the events the registry keeps.

Lines: rank 0 prints one line per report (`ray job logs` shows them, prefixed by Ray with the
worker's pid), e.g. `[job] step 40/120 epoch 1.33 loss 2.3141 lr 1.00e-04 tokens/s 5321 eta 2m10s`,
and at validations `val_loss 2.2801 best 2.2801@40`. The ETA is the steps left at the run's pace so
far, validations included. They are written to stdout directly: Ray Train
replaces `print` in workers with a logger that, where stdout is wrapped, also prints, so a plain
`print` shows every line twice.

Events: `RegistryEvents` runs in the Ray Train controller (callbacks run there, not in workers) and
records one registry event per validation, resumption and early stop: milestones at the rate a
reader of `tuneloop adapters history` wants, not one row per optimizer step.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.train import UserCallback

from tuneloop.platform import curves

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
    if "eta_s" in metrics and not metrics.get("final"):
        parts.append(f"eta {curves.duration(metrics['eta_s'])}")
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


SCALARS = (
    ("train/loss", "loss"),
    ("train/learning_rate", "lr"),
    ("train/grad_norm", "grad_norm"),
    ("train/tokens_per_s", "tokens_per_s"),
    ("eval/loss", "val_loss"),
)
"""TensorBoard tag -> the curves row's field (platform/curves.py)."""


class TrainingCurves(UserCallback):
    """Keep a run's curves (platform/curves.py): metrics.jsonl and TensorBoard events per report.

    Written where the artifact store is when it is a local folder (a shared volume on a cluster);
    for a remote store (s3://) into a local folder first, then copied up after every report. Best
    effort: a store that cannot be written is logged, never fails the training.
    """

    def __init__(self, store_url: str, job_id: str, run: str) -> None:
        self.store_url = store_url
        self.job_id = job_id
        self.run = run
        self._writer: Any = None
        self._local: Path | None = None

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None
    ) -> None:
        if not metrics or "step" not in metrics[0]:
            return
        try:
            self._write(curves.report_rows(self.run, metrics[0], time.time()))
        except Exception as exc:  # curves must never stop a training run
            log.warning("could not write the training curves of job %s: %s", self.job_id, exc)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        import json

        from fsspec.implementations.local import LocalFileSystem

        from tuneloop.platform.artifacts import ArtifactStore

        store = ArtifactStore(self.store_url)
        remote = curves.job_dir(store, self.job_id)
        if self._local is None:
            local = isinstance(store.fs, LocalFileSystem)
            self._local = Path(remote) if local else Path(tempfile.mkdtemp(prefix="tuneloop-curves-"))
            self._local.mkdir(parents=True, exist_ok=True)
        with (self._local / curves.CURVES_FILE).open("a") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        writer = self._tensorboard()
        for row in rows:
            for tag, key in SCALARS:
                if row.get(key) is not None:
                    writer.add_scalar(tag, row[key], row["step"])
        writer.flush()
        if str(self._local) != remote:
            for path in self._local.rglob("*"):
                if path.is_file():
                    store.fs.put_file(str(path), f"{remote}/{path.relative_to(self._local).as_posix()}")

    def _tensorboard(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            assert self._local is not None
            folder = self._local / curves.TENSORBOARD_DIR / self.run.replace(" ", "-")
            self._writer = SummaryWriter(log_dir=str(folder))
        return self._writer
