"""`tuneloop train` end to end on a real Ray head: every run is a Ray job submitted with `ray job submit`.

The driver is `tuneloop train job.yaml` in the job's working dir, exactly as users run it; Ray Train
workers fine-tune the tiny Llama on a small colours task; results land in a registry and artifact
store under the test's tmp_path (passed to the job through its runtime env). A bad job is tried
without Ray at all: it must fail before anything starts.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from helpers.jobs import Finished, killed_once, submit, write_job
from helpers.servers import RayHead

from tuneloop.platform.curves import read_rows
from tuneloop.platform.registry.tables import JobStatus, VersionStatus
from tuneloop.train.state import staging_dir

pytestmark = pytest.mark.slow

# -- a LoRA SFT job on 2 workers: trains, loses a worker, resumes, evaluates, publishes a candidate -----


@pytest.fixture(scope="module")
def lora_job(ray_head: RayHead, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """One job that shows most of the recipe: DDP over gloo on 2 workers, and the last worker killed at
    step 8 of the first attempt (after the checkpoint at step 6), so Ray Train restarts the worker
    group from that checkpoint and the job still completes all 18 steps."""
    return killed_once(ray_head, tmp_path_factory.mktemp("lora-job"), tiny_model_dir, "ddp")


def test_the_job_trains_on_two_workers_and_val_loss_falls(lora_job: Finished) -> None:
    job = lora_job.job()  # the registry job id is the Ray submission id
    assert job.status == JobStatus.SUCCEEDED
    training = job.result["training"]
    assert training["world_size"] == 2 and training["steps"] == 18 and not training["stopped_early"]
    assert training["best_val_loss"] < training["initial_val_loss"] - 0.5, training
    # Progress lines from the workers reach the job log, then the metrics table and the version.
    assert "step 6/18" in lora_job.log and "val_loss" in lora_job.log and "tokens/s" in lora_job.log
    assert "2 worker(s) on cpu" in lora_job.log
    lines = [line.strip() for line in lora_job.log.splitlines() if line.strip()]
    assert "colours@1" in lines and any(line.startswith("test metric") for line in lines)


def test_the_job_keeps_its_loss_curves_beside_its_artifacts(
    lora_job: Finished, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tuneloop.platform.cli import main
    from tuneloop.platform.curves import job_dir

    job_id = lora_job.submission_id
    rows = read_rows(lora_job.store, job_id)
    assert rows is not None
    # Every step once (the steps the killed attempt made after its checkpoint were written again).
    assert sorted(row["step"] for row in rows) == list(range(1, 19))
    assert all(math.isfinite(row["loss"]) and row["lr"] > 0 and row["grad_norm"] > 0 for row in rows)
    validated = {row["step"]: row["val_loss"] for row in rows if row.get("val_loss") is not None}
    assert sorted(validated) == [6, 12, 18]
    assert validated[18] < rows[0]["loss"]
    assert any(row.get("tokens_per_s", 0) > 0 for row in rows) and rows[-1]["total_steps"] == 18
    # The progress lines carry an ETA until the last report.
    assert re.search(r"step \d+/18 .* eta \d+(m\d\d)?s", lora_job.log), lora_job.log[-3000:]

    # TensorBoard reads the same curves from the event files.
    events = EventAccumulator(f"{job_dir(lora_job.store, job_id)}/tensorboard/{job_id}")
    events.Reload()
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/loss"} <= set(
        events.Tags()["scalars"]
    )
    assert {e.step for e in events.Scalars("train/loss")} == set(range(1, 19))
    assert [e.step for e in events.Scalars("eval/loss")][-1] == 18

    # `tuneloop jobs metrics` prints them.
    monkeypatch.setenv("TUNELOOP_ARTIFACTS", lora_job.store.root_url)
    assert main(["jobs", "metrics", job_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows
    assert main(["jobs", "metrics", job_id]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["STEP", "LOSS", "VAL_LOSS"] and len(table) == 19


def test_a_killed_worker_resumes_from_its_last_checkpoint(lora_job: Finished) -> None:
    assert "worker 1 exits at step 8" in lora_job.log
    assert "resumed at step 6 (restart 1)" in lora_job.log
    training = lora_job.job().result["training"]
    # Resumed from the checkpoint at step 6, not from scratch, and went on to the end.
    assert training["restarts"] == 1 and training["resumed_from_step"] == 6, training
    assert [step for step, _ in training["val_history"]] == [0, 6, 12, 18]
    assert "job.resumed" in lora_job.events()


def test_test_metrics_stand_beside_the_base_models(lora_job: Finished) -> None:
    version = lora_job.registry.get_version("colours@1")
    metrics = version.metrics
    for name in ("loss", "perplexity", "exact_match", "token_f1"):
        assert name in metrics and f"base_{name}" in metrics
    assert metrics["loss"] < metrics["base_loss"]
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert lora_job.job().result["metrics"] == metrics


def test_the_published_candidate_is_the_evaluated_model(
    lora_job: Finished, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from tuneloop.platform.data import make_splits
    from tuneloop.platform.spec import JobSpec
    from tuneloop.train import methods
    from tuneloop.train.evaluate import score
    from tuneloop.train.tokenize import encode_splits

    version = lora_job.registry.get_version("colours@1")
    assert version.status == VersionStatus.CANDIDATE and version.job_id == lora_job.submission_id
    manifest = lora_job.store.manifest("colours", 1)
    assert manifest.job_id == lora_job.submission_id and manifest.data_hash == version.data_hash
    assert manifest.metrics == version.metrics and manifest.method == "lora" and manifest.serving == "lora"
    fetched = lora_job.store.fetch("colours", 1, tmp_path / "fetched")
    config = json.loads((fetched / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)  # the string vLLM serves
    # Score the stored artifact again on the job's own test split: the same numbers as published.
    spec = JobSpec.model_validate(version.manifest["spec"])
    assert version.manifest["data_hash"] == manifest.data_hash
    # The spec names the job's copy of the data in Ray's working dir; the original has the same content.
    spec = spec.model_copy(
        update={"data": spec.data.model_copy(update={"train": lora_job.workdir / "data.jsonl"})}
    )
    splits = make_splits(spec.data, spec.task)
    assert splits.stats["data_hash"] == manifest.data_hash
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    encoded, _ = encode_splits(splits, tokenizer, spec.data, spec.task)
    model = methods.get("lora").load(tiny_model_dir, fetched)
    found = score(
        model,
        tokenizer=tokenizer,
        examples=splits.test,
        inputs=encoded["test"],
        max_length=64,
        batch_size=4,
        device="cpu",
    )
    for name, value in found.items():
        assert value == pytest.approx(version.metrics[name], abs=1e-5), name


def test_the_job_leaves_events_and_no_run_folders(lora_job: Finished) -> None:
    events = lora_job.events()
    assert events[0] == "job.started" and events[-1] == "job.published"
    assert events.count("job.validation") == 3 and "job.evaluated" in events
    assert lora_job.registry.history("colours")[-1].kind == "job.published"
    assert not lora_job.store.fs.exists(f"{lora_job.store.root}/runs/{lora_job.submission_id}")
    assert not staging_dir(lora_job.submission_id).exists()


# -- the same job sharded with FSDP: resumes the same way, publishes the same PEFT folder --------------


@pytest.fixture(scope="module")
def fsdp_job(ray_head: RayHead, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """The LoRA job above with `scaling.strategy: fsdp` (FSDP2 over gloo) and packed batches, the last
    worker killed at step 8 again."""
    return killed_once(ray_head, tmp_path_factory.mktemp("fsdp-job"), tiny_model_dir, "fsdp", packing=True)


def test_an_fsdp_job_trains_resumes_and_publishes_a_peft_adapter(
    fsdp_job: Finished, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from tuneloop.train import methods

    assert "2 worker(s) on cpu (fsdp)" in fsdp_job.log
    assert "worker 1 exits at step 8" in fsdp_job.log and "resumed at step 6 (restart 1)" in fsdp_job.log
    training = fsdp_job.job().result["training"]
    assert training["world_size"] == 2 and training["steps"] == 18
    assert training["restarts"] == 1 and training["resumed_from_step"] == 6, training
    assert [step for step, _ in training["val_history"]] == [0, 6, 12, 18]
    assert training["best_val_loss"] < training["initial_val_loss"] - 0.5, training
    # The adapter is the PEFT folder a DDP job publishes: whole (gathered) LoRA weights, base named.
    fetched = fsdp_job.store.fetch("colours", 1, tmp_path / "fetched")
    config = json.loads((fetched / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(tiny_model_dir)
    weights = load_file(str(fetched / "adapter_model.safetensors"))
    assert weights and all("lora_" in name for name in weights)
    assert all(tensor.shape[0] in (8, 128) and tensor.shape[1] in (8, 128) for tensor in weights.values())
    model = methods.get("lora").load(tiny_model_dir, fetched)
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    metrics = fsdp_job.registry.get_version("colours@1").metrics
    assert metrics["loss"] < metrics["base_loss"]


def test_full_fine_tuning_shards_with_fsdp_and_publishes_a_whole_model(
    ray_head: RayHead, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Every weight trains, sharded over 2 workers; the published folder is a model vLLM can start."""
    from transformers import AutoModelForCausalLM

    workdir = write_job(
        tmp_path / "job",
        tiny_model_dir,
        method={"name": "full"},
        hyperparameters={"learning_rate": 0.001, "batch_size": 4, "max_steps": 4, "eval_every": 2},
        scaling={"num_workers": 2, "cpus_per_worker": 1, "max_failures": 0, "strategy": "fsdp"},
    )
    finished = submit(ray_head, workdir, tmp_path / "state")
    assert finished.returncode == 0, finished.log[-6000:]
    assert "2 worker(s) on cpu (fsdp): full trains" in finished.log
    training = finished.job().result["training"]
    assert training["steps"] == 4 and training["best_val_loss"] < training["initial_val_loss"], training
    fetched = finished.store.fetch("colours", 1, tmp_path / "fetched")
    tuned = AutoModelForCausalLM.from_pretrained(str(fetched))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    changed = [n for n, p in tuned.named_parameters() if not p.equal(base.get_parameter(n))]
    assert len(changed) == len(list(base.named_parameters())), "every weight was trained and gathered whole"
