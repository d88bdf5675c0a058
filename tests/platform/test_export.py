"""`tuneloop adapters export`: the PEFT folder as stored, or merged into a plain model that transformers
and vLLM load without adapter support; checked by loading each export and comparing outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.gateway import write_peft_like
from openai import OpenAI

from tuneloop.platform.adapters import import_adapter
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.cli import main
from tuneloop.platform.registry import Registry

PROMPT = "The river runs past"


@pytest.fixture
def stored(tmp_path: Path, tiny_lora_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry holding the tiny LoRA as bot@1 (and its alias `bot`) and a prompt-tuning adapter."""
    for name in ("TUNELOOP_DB_URL", "TUNELOOP_ARTIFACTS"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    registry, store = Registry(), ArtifactStore()
    import_adapter("bot", tiny_lora_dir, registry=registry, store=store, max_lora_rank=16)
    registry.promote("bot", "bot@1")
    base = Path(registry.get_version("bot@1").adapter.base_model)
    soft = write_peft_like(tmp_path / "soft", base, "PROMPT_TUNING", {"prompt_embeddings": (4, 128)})
    import_adapter("soft", soft, registry=registry, store=store, max_lora_rank=16)
    return base


def logits(model: Any, tokenizer: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(**tokenizer(PROMPT, return_tensors="pt")).logits


def test_the_peft_folder_and_the_merged_model_give_the_adapters_outputs(
    stored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["adapters", "export", "bot", str(tmp_path / "peft")]) == 0
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert main(["adapters", "export", "bot@1", str(tmp_path / "merged"), "--merge"]) == 0
    assert "bot@1 exported to" in capsys.readouterr().out
    merged_files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= merged_files
    assert not any(name.startswith("adapter") for name in merged_files)

    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    base = AutoModelForCausalLM.from_pretrained(str(stored))
    expected = logits(PeftModel.from_pretrained(base, str(tmp_path / "peft")), tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    assert not any("lora" in name for name in merged.state_dict())
    assert torch.allclose(logits(merged, tokenizer), expected, atol=1e-4)
    plain = AutoModelForCausalLM.from_pretrained(str(stored))
    assert not torch.allclose(logits(plain, tokenizer), expected, atol=1e-3), (
        "the adapter must change the output"
    )


def test_export_refusals_are_one_line_and_leave_nothing(
    stored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").mkdir()
    cases = {
        ("bot", str(tmp_path / "taken")): "already exists; export into a new folder",
        (
            "soft@1",
            str(tmp_path / "soft-merged"),
            "--merge",
        ): "whose weights do not merge into the base model",
        ("nobody@3", str(tmp_path / "x")): "nobody",
    }
    for args, message in cases.items():
        assert main(["adapters", "export", *args]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("home", "soft")) == ["taken"]
    assert main(["adapters", "export", "soft@1", str(tmp_path / "soft-peft")]) == 0


@pytest.mark.slow
def test_vllm_serves_the_merged_export_as_a_plain_model(
    stored: Path, tmp_path: Path, vllm_factory: Callable[..., Any]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["adapters", "export", "bot@1", str(tmp_path / "merged"), "--merge"]) == 0
    server = vllm_factory(tmp_path / "merged")
    client = OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    served = client.completions.create(
        model=server.model,
        prompt=PROMPT,
        max_tokens=4,
        temperature=0.0,
        logprobs=1,
        extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True},
    )
    assert served.choices[0].logprobs is not None and served.choices[0].logprobs.tokens is not None
    served_ids = [int(token.removeprefix("token_id:")) for token in served.choices[0].logprobs.tokens]
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert served_ids == out[0, inputs["input_ids"].shape[1] :].tolist()
