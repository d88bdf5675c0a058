"""Loss curves (platform/curves.py): the controller's writer, on a local and on a remote (fsspec
memory://) artifact store, TensorBoard reading its event files back, `tuneloop jobs metrics`, and
the control process's training gauges of running jobs. A real training job writes them in
tests/train/test_recipe.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import fsspec
import pytest
from fastapi.testclient import TestClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tuneloop.monitoring.control import create_app
from tuneloop.platform import curves
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.cli import main
from tuneloop.platform.registry import Registry
from tuneloop.platform.registry.tables import JobStatus
from tuneloop.train.progress import TrainingCurves, progress_line


def report(step: int, *, evaluated: bool = False, first: int | None = None) -> dict[str, object]:
    """A report as the recipe makes it: the steps since the previous report, then the report's values."""
    steps = range(first or step, step + 1)
    return {
        "step": step,
        "total_steps": 10,
        "epoch": step / 5,
        "loss": 2.0 - step / 10,
        "lr": 1e-3,
        "tokens_per_s": 1234.5,
        "eta_s": 10.0 * (10 - step),
        "val_loss": 1.9 - step / 10 if evaluated else math.nan,
        "evaluated": evaluated,
        "final": step == 10,
        "curve": [{"step": s, "loss": 2.0 - s / 10, "lr": 1e-3 * s, "grad_norm": 0.5 + s} for s in steps],
    }


def write_job(store: ArtifactStore, job_id: str, run: str) -> None:
    callback = TrainingCurves(store.root_url, job_id, run)
    for metrics in (report(3, first=1), report(5, first=4, evaluated=True), report(4, first=4), report(6)):
        callback.after_report(None, [metrics], None)  # step 4 again: a restart from a checkpoint


@pytest.mark.parametrize("where", ["local", "memory"])
def test_reports_become_rows_and_tensorboard_scalars(where: str, tmp_path: Path) -> None:
    url = str(tmp_path / "artifacts") if where == "local" else f"memory://curves-{tmp_path.name}"
    store = ArtifactStore(url)
    write_job(store, "job-1", "job-1")
    rows = curves.read_rows(store, "job-1")
    assert rows is not None
    assert [row["step"] for row in rows] == [1, 2, 3, 5, 4, 6]  # the last write of step 4 wins
    assert rows[0] == {"run": "job-1", "step": 1, "loss": 1.9, "lr": 1e-3, "grad_norm": 1.5}
    assert rows[3]["val_loss"] == pytest.approx(1.4) and rows[3]["eta_s"] == 50.0
    assert "val_loss" not in rows[5] and rows[5]["tokens_per_s"] == 1234.5
    newest = curves.latest(store, "job-1")
    assert newest is not None and newest["step"] == 6 and newest["val_loss"] == pytest.approx(1.4)

    local = tmp_path / "read-back"
    if where == "memory":  # TensorBoard reads local folders: fetch the uploaded files first
        store.fs.get(curves.job_dir(store, "job-1"), str(local), recursive=True)
        folder = local / "tensorboard" / "job-1"
        fsspec.filesystem("memory").store.clear()
    else:
        folder = Path(curves.job_dir(store, "job-1")) / "tensorboard" / "job-1"
    events = EventAccumulator(str(folder))
    events.Reload()
    assert sorted({e.step for e in events.Scalars("train/loss")}) == [1, 2, 3, 4, 5, 6]
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("eval/loss")] == [(5, 1.4)]
    assert {e.step for e in events.Scalars("train/tokens_per_s")} == {3, 5, 4, 6}


def test_a_store_that_cannot_be_written_never_stops_training(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    TrainingCurves(str(blocked), "job-1", "job-1").after_report(None, [report(1)], None)  # logs only


def test_progress_lines_carry_an_eta_until_the_end() -> None:
    assert progress_line("j", report(4)).endswith("tokens/s 1234 eta 1m00s")
    assert "eta" not in progress_line("j", report(10))


def test_jobs_metrics_prints_a_table_or_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNELOOP_ARTIFACTS", str(tmp_path / "artifacts"))
    write_job(ArtifactStore(), "job-1", "job-1")
    assert main(["jobs", "metrics", "job-1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["STEP", "LOSS", "VAL_LOSS", "LR", "GRAD_NORM", "TOKENS/S", "ETA"]
    assert lines[4].split() == ["5", "1.5000", "1.4000", "5.00e-03", "5.500", "1234", "50s"]
    assert main(["jobs", "metrics", "job-1", "--json"]) == 0
    assert [row["step"] for row in json.loads(capsys.readouterr().out)] == [1, 2, 3, 5, 4, 6]
    assert main(["jobs", "metrics", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tuneloop: error: no training metrics for job 'nope'") and err.count("\n") == 1


def test_the_control_process_exports_the_curves_of_running_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_ARTIFACTS", str(tmp_path / "artifacts"))
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    for job_id in ("job-a", "job-b"):
        registry.start_job(job_id, "support", {})
        write_job(ArtifactStore(), job_id, job_id)
    client = TestClient(create_app(registry, token="t"))

    def training_series() -> dict[str, float]:
        text = client.get("/metrics").text
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("tuneloop_training_")
        }

    found = training_series()
    assert found['tuneloop_training_step{adapter="support",job="job-a"}'] == 6.0
    assert found['tuneloop_training_total_steps{adapter="support",job="job-b"}'] == 10.0
    assert found['tuneloop_training_val_loss{adapter="support",job="job-a"}'] == pytest.approx(1.4)
    assert found['tuneloop_training_eta_seconds{adapter="support",job="job-a"}'] == 40.0
    assert found['tuneloop_training_grad_norm{adapter="support",job="job-a"}'] == 6.5
    registry.finish_job("job-a", JobStatus.SUCCEEDED)
    assert not any('job="job-a"' in name for name in training_series())
    assert any('job="job-b"' in name for name in training_series())
