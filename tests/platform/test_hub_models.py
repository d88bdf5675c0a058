"""Base models by Hugging Face id, resolved through a real hub cache on disk with HF_HUB_OFFLINE=1."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.hub_cache import lay_out_hub_cache

from tuneloop.platform.basemodels import local_model_dir, resolve_model, same_base_model
from tuneloop.platform.errors import NotFoundError
from tuneloop.train.preflight import base_model

REPO = "tiny-org/tiny-llama"


@pytest.fixture
def hub(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    return lay_out_hub_cache(tmp_path / "hf", REPO, tiny_model_dir)


def test_an_id_resolves_to_its_cached_snapshot(hub: str, tmp_path: Path) -> None:
    folder = resolve_model(REPO)
    assert folder == tmp_path / "hf" / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / hub
    assert (folder / "config.json").is_file()
    assert resolve_model(f"{REPO}@{hub}") == folder, "a revision given as the commit"
    assert resolve_model(f"{REPO}@main") == folder, "a revision given as a branch"


def test_transformers_loads_what_the_id_resolves_to(hub: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(REPO)
    assert AutoTokenizer.from_pretrained(str(folder)).chat_template
    assert AutoModelForCausalLM.from_pretrained(str(folder)).config.num_hidden_layers == 2


def test_a_missing_id_or_revision_is_one_clear_error(hub: str) -> None:
    with pytest.raises(
        NotFoundError, match=r"'tiny-org/absent' is not in the Hugging Face cache .*HF_HUB_OFFLINE"
    ):
        resolve_model("tiny-org/absent")
    with pytest.raises(NotFoundError, match="not in the Hugging Face cache"):
        resolve_model(f"{REPO}@no-such-branch")
    with pytest.raises(NotFoundError, match=r"not a model folder .* or a Hugging Face id"):
        resolve_model("no-such-name")


def test_an_id_and_its_folder_are_the_same_base(hub: str) -> None:
    folder = resolve_model(REPO)
    assert same_base_model(REPO, str(folder)) and local_model_dir(REPO) == folder
    assert not same_base_model(REPO, "tiny-org/absent")


def test_a_job_records_the_id_as_given_and_trains_on_the_snapshot(hub: str) -> None:
    problems: list[str] = []
    folder, ref = base_model(REPO, problems)
    assert problems == [] and folder == resolve_model(REPO) and ref == REPO
    _, _ = base_model("tiny-org/absent", problems)
    assert len(problems) == 1 and problems[0].startswith("base_model: model 'tiny-org/absent' is not in")


def test_an_adapter_imports_against_a_base_named_by_id(
    hub: str, tiny_lora_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.platform.cli import main
    from tuneloop.platform.registry import Registry

    for name in (
        "TUNELOOP_DB_URL",
        "TUNELOOP_ARTIFACTS",
        "TUNELOOP_MAX_LORA_RANK",
        "TUNELOOP_LORA_TARGET_MODULES",
    ):
        monkeypatch.delenv(name, raising=False)
    assert main(["adapters", "import", "bot", str(tiny_lora_dir), "--base-model", REPO]) == 0
    assert capsys.readouterr().out == "bot@1\n"
    assert Registry().get_version("bot@1").adapter.base_model == REPO
    assert main(["adapters", "import", "bot2", str(tiny_lora_dir), "--base-model", "tiny-org/absent"]) == 1
    assert "not in the Hugging Face cache" in capsys.readouterr().err


def test_a_hub_dataset_file_is_read_from_the_cache(
    hub: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import yaml

    from tuneloop.platform.data import make_splits
    from tuneloop.platform.ray import submit as jobs
    from tuneloop.platform.spec import load_spec

    files = tmp_path / "dataset-files"
    files.mkdir()
    rows = [{"prompt": f"Question {i}?", "completion": f" {i}"} for i in range(10)]
    (files / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lay_out_hub_cache(tmp_path / "hf", "tiny-org/qa", files, repo_type="dataset")
    url = "hf://datasets/tiny-org/qa/qa.jsonl"
    spec = {
        "base_model": REPO,
        "method": {"name": "lora"},
        "data": {"train": url},
        "output": {"adapter": "a"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    loaded = load_spec(tmp_path / "job.yaml")
    assert loaded.data.train.parts[-4:] == (
        "datasets--tiny-org--qa",
        "snapshots",
        loaded.data.train.parts[-2],
        "qa.jsonl",
    )
    assert make_splits(loaded.data, "sft").stats["train"] == 8
    assert jobs.staged_sources(tmp_path / "job.yaml") == {"data/train/qa.jsonl": url}
    with jobs.staged_working_dir(tmp_path / "job.yaml") as (root, _):
        assert (root / "data" / "train" / "qa.jsonl").read_text() == (files / "qa.jsonl").read_text()
    from tuneloop.platform.cli import main

    assert main(["data", "check", url]) == 0
    assert "10 rows, 10 valid (10 prompt_completion)" in capsys.readouterr().out
    assert main(["data", "check", "hf://datasets/tiny-org/qa/absent.jsonl"]) == 1
    assert (
        "'hf://datasets/tiny-org/qa/absent.jsonl' is not in the Hugging Face cache" in capsys.readouterr().err
    )


def test_a_hub_dataset_path_is_checked_before_any_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.platform.hub import hub_dataset_file

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for file in ("../../x.jsonl", "a/../../x.jsonl", "/etc/passwd", "a\\..\\x.jsonl", "x" * 1025):
        with pytest.raises(NotFoundError, match="FILE must be a path inside the dataset"):
            hub_dataset_file(f"hf://datasets/tiny-org/qa/{file}")
    # huggingface_hub refuses ids our pattern lets through ('--'): one line, not its ValueError.
    with pytest.raises(NotFoundError, match=r"'hf://datasets/tiny-org/q--a/x\.jsonl' cannot be fetched"):
        hub_dataset_file("hf://datasets/tiny-org/q--a/x.jsonl")
