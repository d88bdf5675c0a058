"""The pieces the training recipe calls, without Ray: schedule, early stopping, checkpoint state,
search-space checks, test-set scoring, and publishing (store + registry, all or nothing)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.data import Example
from tuneloop.platform.errors import ArtifactError, ConflictError
from tuneloop.platform.registry import Registry
from tuneloop.platform.spec import HyperParams, JobSpec, SearchSpec
from tuneloop.train import methods
from tuneloop.train.evaluate import exact_match, format_table, normalize_answer, score, token_f1
from tuneloop.train.recipe import planned_steps
from tuneloop.train.schedule import lr_factor
from tuneloop.train.state import (
    BEST,
    load_trainable,
    read_checkpoint,
    read_state,
    save_checkpoint,
    trainable_snapshot,
)
from tuneloop.train.stopping import EarlyStopper
from tuneloop.train.tune import space_problems

# -- schedule ---------------------------------------------------------------------------------------


def test_warmup_then_each_schedule() -> None:
    linear = lr_factor("linear", warmup_steps=4, total_steps=14)
    assert [round(linear(s), 3) for s in range(6)] == [0.2, 0.4, 0.6, 0.8, 1.0, 0.9]
    assert linear(13) == pytest.approx(0.1) and linear(14) == 0.0
    cosine = lr_factor("cosine", warmup_steps=0, total_steps=10)
    assert cosine(0) == 1.0 and cosine(5) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)
    constant = lr_factor("constant", warmup_steps=2, total_steps=10)
    assert [round(constant(s), 3) for s in (0, 1, 2, 9)] == [0.333, 0.667, 1.0, 1.0]


def test_planned_steps_follow_epochs_workers_and_accumulation() -> None:
    hp = HyperParams(batch_size=4, epochs=2, gradient_accumulation=2)
    # 30 inputs over 2 workers: 15 each (padded), 4 batches of 4, 2 optimizer steps per epoch.
    assert planned_steps(hp, 30, 2) == 4
    assert planned_steps(hp.model_copy(update={"max_steps": 7}), 30, 2) == 7
    assert planned_steps(HyperParams(batch_size=8, epochs=0.1), 10, 1) == 1


# -- early stopping ---------------------------------------------------------------------------------


def test_early_stopping_counts_validations_without_enough_improvement() -> None:
    stopper = EarlyStopper(patience=2, min_delta=0.1)
    assert stopper.update(0, 3.0)  # the untrained model is the first best
    assert not stopper.update(5, 2.95)  # better, but by less than min_delta
    assert not stopper.should_stop
    assert stopper.update(10, 2.5) and stopper.best_step == 10
    assert not stopper.update(15, 2.6) and not stopper.update(20, math.nan)
    assert stopper.should_stop and stopper.best == 2.5
    restored = EarlyStopper(patience=2, min_delta=0.1)
    restored.load_state_dict(json.loads(json.dumps(stopper.state_dict())))
    assert json.dumps(restored.state_dict()) == json.dumps(stopper.state_dict())  # NaN != NaN


def test_no_patience_never_stops() -> None:
    stopper = EarlyStopper(patience=None)
    for step in range(10):
        stopper.update(step, 1.0)
    assert not stopper.should_stop and stopper.best_step == 0


# -- checkpoint state -------------------------------------------------------------------------------


def _lora(model_dir: Path, seed: int = 0) -> torch.nn.Module:
    spec = JobSpec.model_validate(_spec_dict(model_dir)).method
    method = methods.get("lora")
    torch.manual_seed(seed)
    return method.prepare(method.load_base(model_dir, spec, dtype=torch.float32, device="cpu"), spec)


def _spec_dict(model_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "base_model": str(model_dir),
        "method": {"name": "lora", "rank": 4},
        "data": {"train": "/nonexistent.jsonl"},
        "output": {"adapter": "parts"},
        **extra,
    }


def _randomise(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def test_checkpoint_round_trip_restores_weights_optimizer_and_best(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = _lora(tiny_model_dir)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor("linear", warmup_steps=1, total_steps=5)
    )
    _randomise(model, 1)
    best = trainable_snapshot(model)
    ids = torch.randint(10, 200, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    save_checkpoint(
        tmp_path,
        weights=trainable_snapshot(model),
        best=best,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler,
        state={"step": 1},
    )

    again = _lora(tiny_model_dir, seed=5)
    optimizer2 = torch.optim.AdamW([p for p in again.parameters() if p.requires_grad], lr=1e-3)
    scheduler2 = torch.optim.lr_scheduler.LambdaLR(
        optimizer2, lr_factor("linear", warmup_steps=1, total_steps=5)
    )
    saved = read_checkpoint(tmp_path)
    load_trainable(again, saved.weights)
    optimizer2.load_state_dict(saved.optimizer)
    scheduler2.load_state_dict(saved.scheduler)
    state, best2 = saved.state, saved.best
    assert state == {"step": 1} == read_state(tmp_path)
    now, restored = trainable_snapshot(model), trainable_snapshot(again)
    assert now.keys() == restored.keys() and all(torch.equal(now[k], restored[k]) for k in now)
    assert all(torch.equal(best[k], best2[k]) for k in best)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert optimizer2.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


def test_a_checkpoint_of_another_model_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"not.a.parameter": torch.zeros(2)}, str(tmp_path / BEST))
    from tuneloop.train.state import load_trainable

    with pytest.raises(ArtifactError, match="does not fit the model"):
        from safetensors.torch import load_file

        load_trainable(_lora(tiny_model_dir), load_file(str(tmp_path / BEST)))


# -- search space -----------------------------------------------------------------------------------


def test_every_search_space_problem_is_reported() -> None:
    search = SearchSpec(
        space={
            "learning_rate": {"loguniform": [0, 1e-3]},
            "batch_size": {"uniform": [1, 8]},
            "warmup": {"choice": [0, 1]},
            "weight_decay": {"uniform": [0.1, 0.01]},
            "epochs": {"choice": []},
            "schedule": {"choice": ["linear", "exponential"]},
            "seed": {"grid": [1, 2]},
        }
    )
    problems = "\n".join(space_problems(search, HyperParams()))
    for expected in (
        "search.space.learning_rate.loguniform: low must be > 0",
        "search.space.batch_size.uniform: ranges apply to",
        "search.space.warmup: not a hyper-parameter",
        "search.space.weight_decay.uniform: must be [low, high]",
        "search.space.epochs.choice: must be a non-empty list",
        "search.space.schedule: value 'exponential' is invalid",
        "search.space.seed: give exactly one of",
    ):
        assert expected in problems
    good = SearchSpec(space={"learning_rate": {"loguniform": [1e-5, 1e-2]}, "batch_size": {"choice": [2, 4]}})
    assert space_problems(good, HyperParams()) == []


# -- evaluation -------------------------------------------------------------------------------------


def test_answers_are_compared_squad_style() -> None:
    assert normalize_answer("  The Quick, brown fox! ") == "quick brown fox"
    assert exact_match("A red.", "red") == 1.0 and exact_match("red car", "red") == 0.0
    assert token_f1("red car", "red") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("blue", "red") == 0.0


def test_score_reports_loss_perplexity_and_answer_metrics(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.train.tokenize import sft_parts

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    examples = [
        Example(format="prompt_completion", line=i, prompt=f"the cat {i} is", completion=" red")
        for i in range(3)
    ]
    inputs = []
    for example in examples:
        prompt, answer = sft_parts(example, tokenizer)
        inputs.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    found = score(
        model,
        tokenizer=tokenizer,
        examples=examples,
        inputs=inputs,
        max_length=64,
        batch_size=2,
        device="cpu",
    )
    assert set(found) == {"loss", "perplexity", "exact_match", "token_f1"}
    assert found["perplexity"] == pytest.approx(math.exp(found["loss"]))
    assert 0.0 <= found["exact_match"] <= found["token_f1"] + 1e-9 <= 1.0 + 1e-9
    table = format_table({**found, **{f"base_{k}": v for k, v in found.items()}, "test_examples": 3.0})
    assert (
        table.splitlines()[0].split() == ["test", "metric", "tuned", "base"] and "(3 test examples)" in table
    )
    text = [Example(format="text", line=1, text="hello")]
    assert "exact_match" not in score(
        model,
        tokenizer=tokenizer,
        examples=text,
        inputs=inputs[:1],
        max_length=64,
        batch_size=2,
        device="cpu",
    )


# -- publishing -------------------------------------------------------------------------------------


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Registry, ArtifactStore]:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    return registry, ArtifactStore(str(tmp_path / "artifacts"))


def _trained_checkpoint(model_dir: Path, folder: Path) -> torch.nn.Module:
    """A LoRA model with non-trivial weights, its best weights written as a checkpoint's best.safetensors."""
    from safetensors.torch import save_file

    model = _lora(model_dir)
    _randomise(model, 3)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(trainable_snapshot(model), str(folder / BEST))
    return model.eval()


def test_published_version_reloads_with_identical_logits(
    tiny_model_dir: Path, tmp_path: Path, stores: tuple[Registry, ArtifactStore]
) -> None:
    from tuneloop.platform.registry.tables import VersionStatus
    from tuneloop.train.publish import LINEAGE_FILE, export_checkpoint, publish

    registry, store = stores
    spec = JobSpec.model_validate(_spec_dict(tiny_model_dir))
    trained = _trained_checkpoint(tiny_model_dir, tmp_path / "ckpt")
    export_checkpoint(
        tmp_path / "ckpt", tmp_path / "out", spec=spec, model_dir=tiny_model_dir, base_ref=str(tiny_model_dir)
    )
    registry.start_job("job-1", "parts", {})
    version = publish(
        registry=registry,
        store=store,
        source_dir=tmp_path / "out",
        spec=spec,
        base_ref=str(tiny_model_dir),
        job_id="job-1",
        data_hash="abc",
        metrics={"loss": 1.5, "base_loss": 2.0},
        lineage={"job_id": "job-1"},
    )
    assert version.ref == "parts@1" and version.status == VersionStatus.CANDIDATE
    manifest = store.manifest("parts", 1)
    assert (manifest.job_id, manifest.data_hash, manifest.serving, manifest.base_model) == (
        "job-1",
        "abc",
        "lora",
        str(tiny_model_dir),
    )
    fetched = store.fetch("parts", 1, tmp_path / "fetched")
    assert json.loads((fetched / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_model_dir
    )
    assert json.loads((fetched / LINEAGE_FILE).read_text()) == {"job_id": "job-1"}
    reloaded = methods.get("lora").load(tiny_model_dir, fetched)
    ids = torch.randint(10, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=0, atol=1e-6
        )


def test_a_failed_store_leaves_no_row_and_a_failed_row_leaves_no_files(
    tiny_model_dir: Path,
    tmp_path: Path,
    stores: tuple[Registry, ArtifactStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tuneloop.platform.errors import NotFoundError
    from tuneloop.train.publish import export_checkpoint, publish

    registry, store = stores
    spec = JobSpec.model_validate(_spec_dict(tiny_model_dir))
    _trained_checkpoint(tiny_model_dir, tmp_path / "ckpt")
    export_checkpoint(
        tmp_path / "ckpt", tmp_path / "out", spec=spec, model_dir=tiny_model_dir, base_ref=str(tiny_model_dir)
    )
    registry.start_job("job-2", "parts", {})
    kwargs: dict[str, Any] = {
        "registry": registry,
        "store": store,
        "source_dir": tmp_path / "out",
        "spec": spec,
        "base_ref": str(tiny_model_dir),
        "job_id": "job-2",
        "data_hash": None,
        "metrics": {},
        "lineage": {},
    }

    def broken_put(*args: Any, **kwargs: Any) -> str:
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(store, "put", broken_put)
        with pytest.raises(OSError, match="disk full"):
            publish(**kwargs)
    with pytest.raises(NotFoundError):
        registry.list_versions("parts")

    # The files are stored, then the row cannot be written (its job row is not there).
    with pytest.raises(ConflictError):
        publish(**{**kwargs, "job_id": "no-such-job"})
    assert not store.fs.exists(store.path("parts", 1))
    assert publish(**kwargs).ref == "parts@1"  # the number was not burnt


# -- registry jobs ------------------------------------------------------------------------------------


def test_jobs_start_once_and_keep_their_events(stores: tuple[Registry, ArtifactStore]) -> None:
    from tuneloop.platform.registry.tables import JobStatus

    registry, _ = stores
    registry.add_job("submitted", "parts", {"from": "jobs submit"})  # what `tuneloop jobs submit` does
    registry.start_job("submitted", "parts", {"from": "driver"})
    job = registry.get_job("submitted")
    assert job.status == JobStatus.RUNNING and job.spec == {"from": "jobs submit"}
    registry.add_job_event("submitted", "job.validation", "step 5", {"val_loss": 1.0})
    registry.add_job_event("submitted", "job.published", "parts@1")
    events = registry.job_events("submitted")
    assert [e.kind for e in events] == ["job.validation", "job.published"]
    assert events[0].detail == {"val_loss": 1.0, "job_id": "submitted"}
    registry.finish_job("submitted", JobStatus.SUCCEEDED)
    with pytest.raises(ConflictError, match="already ended"):
        registry.start_job("submitted", "parts", {})
    with pytest.raises(ConflictError, match="trains 'parts'"):
        registry.start_job("submitted", "other", {})


def test_importing_the_recipe_is_cheap() -> None:
    code = (
        "import sys, tuneloop.train.recipe, tuneloop.train.driver, tuneloop.train.command, "
        "tuneloop.train.tune, tuneloop.train.evaluate, tuneloop.train.publish; "
        "heavy = {'torch', 'ray', 'transformers'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- which cluster --------------------------------------------------------------------------------------


def test_a_dashboard_url_in_ray_address_is_refused_up_front(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tuneloop.train.cluster import address_problems

    monkeypatch.setenv("TUNELOOP_RAY_DIR", str(tmp_path / "ray"))  # no embedded head there
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    (problem,) = address_problems()
    assert "RAY_ADDRESS=http://127.0.0.1:8265 is a dashboard (Jobs API) URL" in problem
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert address_problems() == []


# -- every method through the recipe's checkpoint -> export -> reload -> score path ----------------------

METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "partial": {"trainable_layers": [-1]},
    "lora": {"rank": 4},
    "qlora": {"rank": 4},
    "prompt_tuning": {"num_virtual_tokens": 4},
    "p_tuning": {"num_virtual_tokens": 4},
    "prefix_tuning": {"num_virtual_tokens": 4},
    "adapter": {"bottleneck": 8},
    "ia3": {},
}


@pytest.mark.parametrize("name", sorted(METHOD_OPTIONS))
def test_every_method_exports_its_best_weights_and_scores(
    name: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from tuneloop.train.publish import export_checkpoint
    from tuneloop.train.tokenize import sft_parts

    spec = JobSpec.model_validate(_spec_dict(tiny_model_dir, method={"name": name, **METHOD_OPTIONS[name]}))
    method = methods.get(name)
    model = method.prepare(
        method.load_base(tiny_model_dir, spec.method, dtype=torch.float32, device="cpu"), spec.method
    )
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():  # a small step away from the initial weights, as training would take
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    (tmp_path / "ckpt").mkdir()
    save_file(trainable_snapshot(model), str(tmp_path / "ckpt" / BEST))
    export_checkpoint(
        tmp_path / "ckpt", tmp_path / "out", spec=spec, model_dir=tiny_model_dir, base_ref="served/base"
    )
    reloaded = method.load(tiny_model_dir, tmp_path / "out")
    ids = torch.randint(10, 200, (2, 9), generator=generator)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(
            reloaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=1e-5
        )
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    examples = [
        Example(format="prompt_completion", line=i, prompt=f"the cat {i}", completion=" sat")
        for i in range(3)
    ]
    inputs = []
    for example in examples:
        prompt, answer = sft_parts(example, tokenizer)
        inputs.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    found = score(
        reloaded,
        tokenizer=tokenizer,
        examples=examples,
        inputs=inputs,
        max_length=32,
        batch_size=2,
        device="cpu",
    )
    assert math.isfinite(found["loss"]) and 0.0 <= found["token_f1"] <= 1.0


def test_a_job_that_cannot_start_closes_only_a_row_recorded_before(tmp_path: Path) -> None:
    from tuneloop.platform.errors import ConfigError, NotFoundError
    from tuneloop.platform.registry.tables import JobStatus
    from tuneloop.train.driver import run

    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    store = ArtifactStore(str(tmp_path / "artifacts"))
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(json.dumps(_spec_dict(tmp_path / "no-model")))
    registry.add_job("recorded", "parts", {})  # what `tuneloop jobs submit` does before submitting
    with pytest.raises(ConfigError, match="no training was started") as err:
        run(spec_path, job_id="recorded", registry=registry, store=store)
    assert "no-model" in str(err.value) and "/nonexistent.jsonl does not exist" in str(err.value)
    job = registry.get_job("recorded")
    assert job.status == JobStatus.FAILED and "no-model" in job.result["error"]
    with pytest.raises(ConfigError):
        run(spec_path, job_id="never-recorded", registry=registry, store=store)
    with pytest.raises(NotFoundError):
        registry.get_job("never-recorded")
    assert not (tmp_path / "artifacts").exists()
