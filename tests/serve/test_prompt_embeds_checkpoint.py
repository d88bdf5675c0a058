"""Fast checks of the prompt-embeddings pieces that need no server.

Finding the input embedding matrix in checkpoints of several shapes (untied, sharded, tied with
only `lm_head.weight` stored, without the `model.` prefix, GPT-2 naming), refusing adapters that
are not soft prompts with messages that say why, and the `prompt_embeds` encoding.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tuneloop.platform.errors import ArtifactError
from tuneloop.serve.prompt_embeds import (
    PromptEmbedder,
    encode_for_vllm,
    load_input_embeddings,
    load_virtual_tokens,
    prompt_embeds_engine_args,
)

HIDDEN = 32


def _llama(dest: Path, *, tied: bool, **save: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest, safe_serialization=True, **save)
    return model


def _rename_keys(model_dir: Path, rename: dict[str, str]) -> None:
    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    save_file({rename.get(k, k): v for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def test_untied_sharded_checkpoint(tmp_path: Path) -> None:
    model = _llama(tmp_path, tied=False, max_shard_size="10KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    got = load_input_embeddings(tmp_path)
    assert torch.equal(got, model.model.embed_tokens.weight)
    assert not torch.equal(got, model.lm_head.weight)


def test_tied_checkpoint_that_stores_only_the_output_head(tmp_path: Path) -> None:
    model = _llama(tmp_path, tied=True)
    _rename_keys(tmp_path, {"model.embed_tokens.weight": "lm_head.weight"})
    assert torch.equal(load_input_embeddings(tmp_path), model.model.embed_tokens.weight)


def test_checkpoint_without_the_wrapper_prefix(tmp_path: Path) -> None:
    model = _llama(tmp_path, tied=True)
    _rename_keys(tmp_path, {"model.embed_tokens.weight": "embed_tokens.weight"})
    assert torch.equal(load_input_embeddings(tmp_path), model.model.embed_tokens.weight)


def test_gpt2_naming(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=HIDDEN, n_layer=1, n_head=2))
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert torch.equal(load_input_embeddings(tmp_path), model.transformer.wte.weight)


def test_checkpoint_without_safetensors_is_refused(tmp_path: Path) -> None:
    _llama(tmp_path, tied=True)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"no \*\.safetensors"):
        load_input_embeddings(tmp_path)


def _adapter(dest: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(dest / "adapter_model.safetensors"))
    return dest


PROMPT_TUNING = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4, "token_dim": HIDDEN}


def test_virtual_tokens_are_read(tmp_path: Path) -> None:
    virtual = torch.randn(4, HIDDEN)
    adapter = _adapter(tmp_path, PROMPT_TUNING, {"prompt_embeddings": virtual})
    assert torch.equal(load_virtual_tokens(adapter, HIDDEN), virtual)


@pytest.mark.parametrize(
    ("config", "tensors", "message"),
    [
        ({"peft_type": "LORA"}, {"x": torch.zeros(1)}, "'LORA' adapter; only PROMPT_TUNING and P_TUNING"),
        ({"peft_type": "PREFIX_TUNING"}, {"x": torch.zeros(1)}, "'PREFIX_TUNING' adapter"),
        ({**PROMPT_TUNING, "num_transformer_submodules": 2}, {"x": torch.zeros(1)}, "encoder-decoder"),
        (PROMPT_TUNING, {"other": torch.zeros(4, HIDDEN)}, "no 'prompt_embeddings' tensor"),
        (PROMPT_TUNING, {"prompt_embeddings": torch.zeros(4, 16)}, r"shape \(4, 16\), expected \(4, 32\)"),
    ],
)
def test_adapters_that_cannot_be_served_are_refused(
    tmp_path: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], message: str
) -> None:
    with pytest.raises(ArtifactError, match=message):
        load_virtual_tokens(_adapter(tmp_path, config, tensors), HIDDEN)


def test_missing_adapter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a PEFT adapter folder"):
        load_virtual_tokens(tmp_path, HIDDEN)
    (tmp_path / "adapter_config.json").write_text(json.dumps(PROMPT_TUNING))
    with pytest.raises(ArtifactError, match="save the adapter with safetensors"):
        load_virtual_tokens(tmp_path, HIDDEN)


def test_encoding_is_base64_of_torch_save_of_just_these_rows() -> None:
    table = torch.randn(1000, HIDDEN)
    rows = table[10:13]  # a view: torch.save would write all 1000 rows of its storage
    encoded = encode_for_vllm(rows)
    decoded = torch.load(io.BytesIO(base64.b64decode(encoded)), weights_only=True)
    assert torch.equal(decoded, rows)
    assert len(base64.b64decode(encoded)) < 3 * HIDDEN * 4 + 2000
    with pytest.raises(ValueError, match="2-D float"):
        encode_for_vllm(torch.zeros(3, HIDDEN, dtype=torch.long))


def test_embedder_prepends_virtual_tokens(tiny_model_dir: Path) -> None:
    embedder = PromptEmbedder(tiny_model_dir)
    ids = embedder.tokenizer("The river runs past")["input_ids"]
    virtual = torch.randn(3, embedder.hidden_size)
    plain = embedder.completion_embeds("The river runs past")
    assert torch.equal(plain, embedder.embeddings[ids])
    assert torch.equal(
        embedder.completion_embeds("The river runs past", virtual), torch.cat([virtual, plain])
    )
    chat = embedder.chat_embeds([{"role": "user", "content": "hi"}], virtual)
    rendered = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert torch.equal(chat[3:], embedder.embeddings[embedder.tokenizer(rendered)["input_ids"]])
    with pytest.raises(ValueError, match="virtual tokens must be"):
        embedder.completion_embeds("x", torch.randn(3, 7))


def test_engine_args_keep_lora_off_the_embedding_layer() -> None:
    args = prompt_embeds_engine_args()
    assert args[:2] == ["--enable-prompt-embeds", "--lora-target-modules"]
    assert "embed_tokens" not in args and "q_proj" in args
    with pytest.raises(ValueError, match="linear layers"):
        prompt_embeds_engine_args(["q_proj", "embed_tokens"])
