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
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.servers import RAY_CLI, RayHead

from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.curves import read_rows
from tuneloop.platform.registry import Registry
from tuneloop.platform.registry.tables import Job, JobStatus, VersionStatus
from tuneloop.platform.settings import child_env
from tuneloop.train.state import staging_dir

pytestmark = pytest.mark.slow
TUNELOOP = str(Path(sys.executable).with_name("tuneloop"))
COLOURS = ["red", "green", "blue", "yellow"]
ANIMALS = [
    "cat",
    "dog",
    "fox",
    "owl",
    "bee",
    "cow",
    "pig",
    "hen",
    "ant",
    "bat",
    "elk",
    "yak",
    "eel",
    "ram",
    "emu",
]


def colour_rows(chat: bool) -> list[dict[str, Any]]:
    """60 questions whose answers are one of four colours: a tiny model learns the answer format fast."""
    rows = []
    for i, animal in enumerate(ANIMALS):
        for j in range(4):
            question, answer = f"What colour is the {animal} number {j}?", COLOURS[(i + j) % 4]
            if chat:
                turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
                rows.append({"messages": turns})
            else:
                rows.append({"prompt": f"Question: {question}\nAnswer:", "completion": f" {answer}"})
    return rows


@dataclass
class Finished:
    """A `tuneloop train` job that ran on the Ray head, and where it left its results."""

    submission_id: str
    workdir: Path
    returncode: int
    log: str
    registry: Registry
    store: ArtifactStore
    seconds: float

    def job(self) -> Job:
        return self.registry.get_job(self.submission_id)

    def events(self) -> list[str]:
        return [event.kind for event in self.registry.job_events(self.submission_id)]


def write_job(folder: Path, model_dir: Path, *, chat: bool = False, **spec: Any) -> Path:
    """A working dir with data.jsonl and job.yaml (the spec: defaults below, overridden by `spec`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in colour_rows(chat)))
    body: dict[str, Any] = {
        "base_model": str(model_dir),
        "method": {"name": "lora", "rank": 8},
        "task": "sft",
        "data": {"train": "data.jsonl", "max_length": 64},
        "hyperparameters": {"learning_rate": 0.01, "batch_size": 4, "max_steps": 12, "eval_every": 4},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 1},
        "output": {"adapter": "colours"},
    }
    body.update(spec)
    (folder / "job.yaml").write_text(
        "# ray job submit --working-dir . -- tuneloop train job.yaml\n"
        + yaml.safe_dump(body, sort_keys=False)
    )
    return folder


def submit(
    ray_head: RayHead, workdir: Path, state: Path, extra_env: dict[str, str] | None = None
) -> Finished:
    """`ray job submit ... -- tuneloop train job.yaml`, waiting for the end (the CLI tails the log)."""
    env_vars = {
        "TUNELOOP_HOME": str(state),
        "TUNELOOP_DB_URL": f"sqlite:///{state / 'registry.db'}",
        "TUNELOOP_ARTIFACTS": str(state / "artifacts"),
        **(extra_env or {}),
    }
    submission_id = f"train-test-{uuid.uuid4().hex[:8]}"
    argv = [
        RAY_CLI, "job", "submit", "--address", ray_head.address, "--submission-id", submission_id,
        "--working-dir", str(workdir), "--runtime-env-json", json.dumps({"env_vars": env_vars}),
        "--", "tuneloop", "train", "job.yaml",
    ]  # fmt: skip
    started = time.monotonic()
    out = subprocess.run(argv, env=child_env(ray_head.env), capture_output=True, text=True, timeout=600)
    return Finished(
        submission_id=submission_id,
        workdir=workdir,
        returncode=out.returncode,
        log=out.stdout + out.stderr,
        registry=Registry(env_vars["TUNELOOP_DB_URL"]),
        store=ArtifactStore(env_vars["TUNELOOP_ARTIFACTS"]),
        seconds=time.monotonic() - started,
    )


def run_here(workdir: Path, state: Path) -> Finished:
    """`tuneloop train job.yaml` as a plain command in `workdir`, with no Ray cluster to join."""
    # Ray starts workers through bash: the system folders stay on PATH.
    path = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
    env = {"PATH": path, "HOME": str(state.parent), "TUNELOOP_HOME": str(state)}
    started = time.monotonic()
    out = subprocess.run(
        [TUNELOOP, "train", "job.yaml"], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    log = out.stdout + out.stderr
    registry = Registry(f"sqlite:///{state / 'registry.db'}")
    job_ids = [line.split()[1].rstrip(":") for line in out.stdout.splitlines() if line.startswith("job ")]
    return Finished(
        submission_id=job_ids[0] if job_ids else "",
        workdir=workdir,
        returncode=out.returncode,
        log=log,
        registry=registry,
        store=ArtifactStore(str(state / "artifacts")),
        seconds=time.monotonic() - started,
    )


# -- a LoRA SFT job on 2 workers: trains, loses a worker, resumes, evaluates, publishes a candidate -----


@pytest.fixture(scope="module")
def lora_job(ray_head: RayHead, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """One job that shows most of the recipe: DDP over gloo on 2 workers, and the last worker killed at
    step 8 of the first attempt (after the checkpoint at step 6), so Ray Train restarts the worker
    group from that checkpoint and the job still completes all 18 steps."""
    return killed_once(ray_head, tmp_path_factory.mktemp("lora-job"), tiny_model_dir, "ddp")


def killed_once(
    ray_head: RayHead, root: Path, model_dir: Path, strategy: str, **hyperparameters: Any
) -> Finished:
    """An 18-step LoRA job on 2 workers whose last worker exits at step 8 of its first attempt."""
    workdir = write_job(
        root / "job",
        model_dir,
        chat=True,
        hyperparameters={
            "learning_rate": 0.01,
            "batch_size": 4,
            "max_steps": 18,
            "eval_every": 6,
            "schedule": "cosine",
            "warmup_steps": 2,
            **hyperparameters,
        },
        scaling={"num_workers": 2, "cpus_per_worker": 1, "max_failures": 2, "strategy": strategy},
    )
    finished = submit(ray_head, workdir, root / "state", {"TUNELOOP_TEST_WORKER_EXIT_AT_STEP": "8"})
    print(f"\nLoRA job ({strategy}) on 2 workers, one killed once: {finished.seconds:.1f} s submit-to-finish")
    assert finished.returncode == 0, finished.log[-6000:]
    return finished


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
