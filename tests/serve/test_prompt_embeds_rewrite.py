"""The gateway's prompt-embeddings hook without an engine: the bodies it builds, what it refuses, and
chat answers reshaped from text completions (the engine-side proof is test_gateway_prompt_tuned.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tuneloop.serve.errors import OpenAIError
from tuneloop.serve.prompt_embeds import PromptEmbedder, rewrite_request
from tuneloop.serve.prompt_embeds.chat import ChatChunks, chat_completion
from tuneloop.serve.prompt_embeds.rewrite import CACHE

MESSAGES = [{"role": "user", "content": "Where does the river go?"}]


@pytest.fixture(scope="module")
def soft_prompt(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved prompt-tuning adapter as peft writes one: config + 4 virtual tokens."""
    folder = tmp_path_factory.mktemp("soft") / "pt"
    folder.mkdir()
    config = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4, "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    virtual = torch.randn(4, 128, generator=torch.Generator().manual_seed(0))
    save_file({"prompt_embeddings": virtual}, str(folder / "adapter_model.safetensors"))
    return folder


def rewrite(endpoint: str, body: dict[str, Any], model: Path, adapter: Path) -> dict[str, Any]:
    return asyncio.run(
        rewrite_request(endpoint, body, adapter_dir=adapter, engine_model=str(model), max_model_len=512)
    )


def decode(encoded: str) -> torch.Tensor:
    tensor: torch.Tensor = torch.load(io.BytesIO(base64.b64decode(encoded)), weights_only=True)
    return tensor


def test_completions_become_virtual_tokens_plus_the_embedded_prompt(
    tiny_model_dir: Path, soft_prompt: Path
) -> None:
    embedder = PromptEmbedder(tiny_model_dir)
    virtual = embedder.load_virtual_tokens(soft_prompt)
    asked = {"model": "pt", "prompt": "The river", "max_tokens": 3, "top_k": 2}
    body = rewrite("completions", asked, tiny_model_dir, soft_prompt)
    assert set(body) == {"model", "prompt_embeds", "max_tokens", "top_k"}
    assert body["model"] == str(tiny_model_dir)  # the base model: no LoRA
    assert torch.equal(decode(body["prompt_embeds"]), embedder.completion_embeds("The river", virtual))
    several = rewrite("completions", {"model": "pt", "prompt": ["a", "b c"]}, tiny_model_dir, soft_prompt)
    assert [decode(e).shape[0] for e in several["prompt_embeds"]] == [
        4 + len(embedder.tokenizer(text)["input_ids"]) for text in ("a", "b c")
    ]
    ids = rewrite("completions", {"model": "pt", "prompt": [5, 6, 7]}, tiny_model_dir, soft_prompt)
    assert torch.equal(decode(ids["prompt_embeds"]), embedder.embed_ids([5, 6, 7], virtual))
    # Versions are immutable: their virtual tokens are read once per version folder.
    assert CACHE.virtual_tokens(soft_prompt, embedder) is CACHE.virtual_tokens(soft_prompt, embedder)


def test_chats_are_rendered_here_and_may_use_the_whole_context(
    tiny_model_dir: Path, soft_prompt: Path
) -> None:
    embedder = PromptEmbedder(tiny_model_dir)
    virtual = embedder.load_virtual_tokens(soft_prompt)
    parts = [{"role": "user", "content": [{"type": "text", "text": "Where does the river go?"}]}]
    asked = {"model": "pt", "messages": parts, "logprobs": False}
    body = rewrite("chat/completions", asked, tiny_model_dir, soft_prompt)
    assert set(body) == {"model", "prompt_embeds", "max_tokens"}
    # The completions endpoint would stop a chat at 16 tokens; vLLM caps this at what the prompt leaves.
    assert body["max_tokens"] == 512
    assert torch.equal(decode(body["prompt_embeds"]), embedder.chat_embeds(MESSAGES, virtual))
    asked = {"model": "pt", "messages": MESSAGES, "max_completion_tokens": 7}
    capped = rewrite("chat/completions", asked, tiny_model_dir, soft_prompt)
    assert capped["max_tokens"] == 7 and "max_completion_tokens" not in capped


@pytest.mark.parametrize(
    ("endpoint", "extra", "param"),
    [
        ("chat/completions", {"tools": [{"type": "function"}]}, "tools"),
        ("chat/completions", {"logprobs": True}, "logprobs"),
        ("chat/completions", {"chat_template": "{{ x }}"}, "chat_template"),
        (
            "chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content",
        ),
        ("completions", {"echo": True}, "echo"),
        ("completions", {"prompt": [5, 99999]}, "prompt"),
        ("completions", {"prompt_embeds": "QUJD"}, "prompt_embeds"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_field(
    tiny_model_dir: Path, soft_prompt: Path, endpoint: str, extra: dict[str, Any], param: str
) -> None:
    chat = endpoint == "chat/completions"
    body: dict[str, Any] = {"model": "pt", **({"messages": MESSAGES} if chat else {"prompt": "x"})}
    with pytest.raises(OpenAIError) as refused:
        rewrite(endpoint, {**body, **extra}, tiny_model_dir, soft_prompt)
    assert refused.value.status == 400 and refused.value.param == param


def test_text_completions_are_reshaped_into_chat_completions() -> None:
    completion = {
        "id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m",
        "choices": [
            {"index": 0, "text": "hi", "finish_reason": "stop", "stop_reason": None, "token_ids": [1]}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }  # fmt: skip
    chat = chat_completion(completion)
    assert chat["object"] == "chat.completion" and chat["usage"] == completion["usage"]
    assert chat["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "logprobs": None,
         "finish_reason": "stop", "stop_reason": None, "token_ids": [1]}
    ]  # fmt: skip
    chunks = ChatChunks()
    events = [
        {"id": "c", "created": 1, "model": "m", "choices": [{"index": i, "text": t, "finish_reason": None}]}
        for i, t in ((0, "a"), (1, "x"), (0, "b"))
    ]
    deltas = [chunks.chunk(e)["choices"][0]["delta"] for e in events]
    assert deltas == [
        {"role": "assistant", "content": "a"},
        {"role": "assistant", "content": "x"},
        {"content": "b"},
    ]
    usage = chunks.chunk({"id": "c", "choices": [], "usage": {"completion_tokens": 2}})
    assert usage["object"] == "chat.completion.chunk" and usage["usage"] == {"completion_tokens": 2}
