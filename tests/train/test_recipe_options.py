"""`tuneloop train` end to end with the options: a hub id and multi-turn Parquet data, early stopping,
a Ray Tune search, a bad job that starts nothing, and the GPU path (helpers/jobs.py runs them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.jobs import TUNELOOP, colour_rows, run_here, submit, write_job
from helpers.servers import RayHead

from tuneloop.platform.curves import read_rows
from tuneloop.platform.registry import Registry
from tuneloop.platform.registry.tables import Job
from tuneloop.train.state import staging_dir

pytestmark = pytest.mark.slow

# -- early stopping, a search ---------------------------------------------------------


def test_a_job_on_a_hub_id_with_multi_turn_parquet_data(
    ray_head: RayHead, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The base model by Hugging Face id from an offline hub cache, the data as Parquet under other
    column names, two trained answers per chat: the job trains and records the id as given."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from helpers.hub_cache import lay_out_hub_cache

    repo = "tiny-org/tiny-llama"
    lay_out_hub_cache(tmp_path / "hf", repo, tiny_model_dir)
    rows = []
    for row in colour_rows(chat=True):
        follow_up = [{"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "yes"}]
        rows.append({"conversation": row["messages"] + follow_up, "id": len(rows)})
    workdir = write_job(
        tmp_path / "job",
        tiny_model_dir,
        base_model=repo,
        data={"train": "data.parquet", "max_length": 64, "columns": {"messages": "conversation"}},
        hyperparameters={"learning_rate": 0.01, "batch_size": 4, "max_steps": 4, "eval_every": 2},
    )
    pq.write_table(pa.Table.from_pylist(rows), workdir / "data.parquet")
    hub_env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    finished = submit(ray_head, workdir, tmp_path / "state", hub_env)
    assert finished.returncode == 0, finished.log[-6000:]
    version = finished.registry.get_version("colours@1")
    assert version.adapter.base_model == repo
    fetched = finished.store.fetch("colours", 1, tmp_path / "fetched")
    assert json.loads((fetched / "adapter_config.json").read_text())["base_model_name_or_path"] == repo
    tokens = version.manifest["data"]
    # Two answers carry loss in every chat: "<colour><|im_end|>" and "yes<|im_end|>", 2 tokens or more each.
    assert tokens["train_loss_tokens"] >= 4 * tokens["train_examples"], tokens


def test_early_stopping_stops_before_max_steps_on_a_private_ray(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`tuneloop train` run directly, with no Ray around: it starts a private Ray and stops it again."""
    # A learning rate this small changes nothing, so the first validation after the start is no better.
    workdir = write_job(
        tmp_path / "job",
        tiny_model_dir,
        hyperparameters={"learning_rate": 1e-12, "batch_size": 4, "max_steps": 40, "eval_every": 2},
        early_stopping={"patience": 1, "min_delta": 0.001},
    )
    finished = run_here(workdir, tmp_path / "state")
    print(f"\nearly-stopping job on a private Ray: {finished.seconds:.1f} s")
    assert finished.returncode == 0, finished.log[-6000:]
    assert "started a private local Ray" in finished.log
    training = finished.job().result["training"]
    assert training["stopped_early"] and training["steps"] == 2 < training["total_steps"] == 40
    assert training["best_step"] == 0  # the untrained weights stayed the best, and are what is published
    assert "job.early_stopped" in finished.events()
    assert "early stop" in finished.log
    assert finished.submission_id.startswith("train-colours-")
    assert not list(Path("/tmp").glob(f"tl-train-*/{finished.submission_id}"))


def test_a_search_records_every_trial_and_publishes_the_best(
    ray_head: RayHead, tiny_model_dir: Path, tmp_path: Path
) -> None:
    workdir = write_job(
        tmp_path / "job",
        tiny_model_dir,
        hyperparameters={"learning_rate": 0.01, "batch_size": 4, "max_steps": 12, "eval_every": 3},
        search={
            "space": {"learning_rate": {"loguniform": [1e-6, 5e-2]}},
            "num_trials": 3,
            "max_concurrent": 3,
            "scheduler": "asha",
        },
        scaling={"num_workers": 1, "cpus_per_worker": 0.5, "max_failures": 0},
    )
    finished = submit(ray_head, workdir, tmp_path / "state")
    print(f"\nsearch of 3 trials: {finished.seconds:.1f} s submit-to-finish")
    assert finished.returncode == 0, finished.log[-6000:]
    result = finished.job().result
    trials = result["trials"]
    assert len(trials) == 3 and len({t["trial_id"] for t in trials}) == 3
    assert all(t["status"] in ("completed", "early_stopped", "stopped_by_asha") for t in trials), trials
    assert all(t["best_val_loss"] is not None for t in trials)
    print("trials:", [(t["status"], t["steps"], round(t["config"]["learning_rate"], 8)) for t in trials])
    best = min(trials, key=lambda t: t["best_val_loss"])
    # The best trial's configuration is the one published.
    version = finished.registry.get_version("colours@1")
    assert version.manifest["hyperparameters"]["learning_rate"] == best["config"]["learning_rate"]
    assert result["hyperparameters"]["learning_rate"] == best["config"]["learning_rate"]
    assert version.manifest["training"]["best_val_loss"] == pytest.approx(best["best_val_loss"])
    assert finished.events().count("job.trial") == 3
    # Each trial's curve is kept in the job's, under its own run name (and TensorBoard run).
    rows = read_rows(finished.store, finished.submission_id) or []
    assert {row["run"] for row in rows} == {f"trial {t['trial_id']}" for t in trials}
    # Trials ASHA stopped may die mid-upload; their staged checkpoints went with the job, runs too.
    assert not staging_dir(finished.submission_id).exists()
    assert not finished.store.fs.exists(f"{finished.store.root}/runs") or not finished.store.fs.ls(
        f"{finished.store.root}/runs"
    )


# -- a bad job starts nothing ----------------------------------------------------------------------------


def test_bad_data_and_spec_are_one_error_and_start_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    workdir = write_job(tmp_path / "job", tiny_model_dir, base_model=str(tmp_path / "no-such-model"))
    lines = (workdir / "data.jsonl").read_text().splitlines()
    lines[2] = '{"prompt": "unfinished'
    lines[5] = '{"prompt": "q", "answer": "a"}'
    (workdir / "data.jsonl").write_text("\n".join(lines) + "\n")
    state = tmp_path / "state"
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), "TUNELOOP_HOME": str(state)}
    out = subprocess.run(
        [TUNELOOP, "train", "job.yaml"], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith(
        "tuneloop: error: job.yaml cannot run; fix and resubmit (no training was started)"
    )
    for expected in ("data.jsonl:3: truncated JSON", "data.jsonl:6: unknown key 'answer'", "no-such-model"):
        assert expected in out.stderr
    assert "Ray" not in out.stdout  # no cluster was joined or started
    assert not (state / "artifacts").exists()
    registry = Registry(f"sqlite:///{state / 'registry.db'}")
    from sqlalchemy import func, select

    with registry.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


# -- the GPU path -----------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_a_lora_job_trains_on_the_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    """bf16 base on the GPU under bf16 autocast, NCCL; skipped where there is no CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    workdir = write_job(
        tmp_path / "job",
        tiny_model_dir,
        scaling={"num_workers": 1, "cpus_per_worker": 1, "use_gpu": True, "max_failures": 0},
    )
    finished = run_here(workdir, tmp_path / "state")
    assert finished.returncode == 0, finished.log[-6000:]
    assert "1 worker(s) on cuda" in finished.log
    training = finished.job().result["training"]
    assert training["best_val_loss"] < training["initial_val_loss"]
    assert "base_loss" in finished.registry.get_version("colours@1").metrics
