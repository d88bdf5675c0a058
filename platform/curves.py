"""A job's training curves: what is kept per optimizer step, where, and how it is read back.

The Ray Train controller writes them (`progress.TrainingCurves`, one call per report) into the
artifact store, beside the versions the job publishes:

    <TUNELOOP_ARTIFACTS>/jobs/<job id>/metrics.jsonl             one JSON object per step
    <TUNELOOP_ARTIFACTS>/jobs/<job id>/tensorboard/<run>/events.*  the same as TensorBoard scalars

A row holds `run` (the job id, or `trial <id>` in a search), `step`, `loss` (training loss of that
step, over every worker), `lr` and `grad_norm` (before clipping); the last step of each report also
has `time`, `epoch`, `total_steps`, `tokens_per_s` (since the previous report), `eta_s`, and
`val_loss` where a validation ran. A run resumed from a checkpoint writes its steps again: readers
keep the last row of each (run, step).

`tensorboard --logdir ~/.tuneloop/artifacts/jobs` shows every job; `tuneloop jobs metrics ID` prints
one; the control process exports the latest row of each running job as `tuneloop_training_*`.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneloop.platform.artifacts import ArtifactStore

CURVES_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
TAIL_BYTES = 64 * 1024
"""How much of the end of a curves file `latest` reads: a scrape never reads a whole long run."""
REPORT_FIELDS = ("epoch", "total_steps", "tokens_per_s", "eta_s")


def job_dir(store: ArtifactStore, job_id: str) -> str:
    """The job's folder in the artifact store (a path of `store.fs`)."""
    return f"{store.root.rstrip('/')}/jobs/{job_id}"


def report_rows(run: str, metrics: dict[str, Any], when: float) -> list[dict[str, Any]]:
    """The rows one report adds: one per step since the previous report, the report's own values on
    the last (NaN, which JSON lacks, becomes null)."""
    rows = [{"run": run, **_finite(point)} for point in metrics.get("curve", [])]
    if not rows:
        rows = [{"run": run, "step": metrics["step"]}]
    last = rows[-1]
    last["time"] = when
    last.update(_finite({key: metrics[key] for key in REPORT_FIELDS if key in metrics}))
    if metrics.get("evaluated"):
        last.update(_finite({"val_loss": metrics["val_loss"]}))
    return rows


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}


def parse_rows(text: str) -> list[dict[str, Any]]:
    """Rows of a curves file, the last of each (run, step) kept, in file order; a torn last line (a
    write in progress) is skipped."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            key = (str(row.get("run", "")), row["step"])
            found.pop(key, None)
            found[key] = row
    return list(found.values())


def read_rows(store: ArtifactStore, job_id: str) -> list[dict[str, Any]] | None:
    """Every row of a job's curves; None when the job has written none (yet)."""
    path = f"{job_dir(store, job_id)}/{CURVES_FILE}"
    if not store.fs.exists(path):
        return None
    with store.fs.open(path, "rb") as handle:
        return parse_rows(handle.read().decode("utf-8", errors="replace"))


def latest(store: ArtifactStore, job_id: str) -> dict[str, Any] | None:
    """The job's newest values: the last report's row, with the newest val_loss seen in the tail."""
    path = f"{job_dir(store, job_id)}/{CURVES_FILE}"
    if not store.fs.exists(path):
        return None
    size = store.fs.size(path)
    with store.fs.open(path, "rb") as handle:
        handle.seek(max(0, size - TAIL_BYTES))
        rows = parse_rows(handle.read().decode("utf-8", errors="replace"))
    reports = [row for row in rows if "time" in row]
    if not reports:
        return None
    newest = dict(reports[-1])
    validated = [row["val_loss"] for row in reports if row.get("val_loss") is not None]
    if validated and newest.get("val_loss") is None:
        newest["val_loss"] = validated[-1]
    return newest


def jobs_metrics(job_id: str, json: bool = False) -> int:
    """Print a job's training curves: loss, validation loss, learning rate, gradient norm, tokens/s per step.

    Read from the artifact store (TUNELOOP_ARTIFACTS/jobs/ID/metrics.jsonl), which the job writes as
    it trains: a running job shows its steps so far. `tensorboard --logdir TUNELOOP_ARTIFACTS/jobs`
    draws the same curves.

    Args:
        job_id: Submission id (`tuneloop jobs list` shows them).
        json: Print the rows as a JSON list instead of a table.
    """
    from tuneloop.platform.artifacts import ArtifactStore
    from tuneloop.platform.errors import NotFoundError
    from tuneloop.platform.output import print_json

    store = ArtifactStore()
    rows = read_rows(store, job_id)
    if rows is None:
        where = store.fs.unstrip_protocol(f"{job_dir(store, job_id)}/{CURVES_FILE}")
        raise NotFoundError(f"no training metrics for job {job_id!r} (yet): nothing at {where}")
    if json:
        print_json(rows)
        return 0
    runs = {row.get("run") for row in rows}
    print(
        ("RUN".ljust(14) + " " if len(runs) > 1 else "")
        + f"{'STEP':>6} {'LOSS':>9} {'VAL_LOSS':>9} {'LR':>9} {'GRAD_NORM':>9} {'TOKENS/S':>9} ETA"
    )
    for row in rows:
        eta = row.get("eta_s")
        print(
            (f"{str(row.get('run'))[:14]:<14} " if len(runs) > 1 else "")
            + f"{row['step']:>6} {_num(row.get('loss'), '.4f')} {_num(row.get('val_loss'), '.4f')} "
            f"{_num(row.get('lr'), '.2e')} {_num(row.get('grad_norm'), '.3f')} "
            f"{_num(row.get('tokens_per_s'), '.0f')} {'' if eta is None else duration(eta)}".rstrip()
        )
    return 0


def _num(value: Any, spec: str) -> str:
    return f"{'-' if value is None else format(value, spec):>9}"


def duration(seconds: float) -> str:
    """A short human duration: 45s, 3m05s, 2h07m."""
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"
