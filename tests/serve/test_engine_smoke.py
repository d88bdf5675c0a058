"""Real-stack smoke test: the tiny model in a real vLLM server, a LoRA adapter hot-loaded at runtime.

Everything the gateway will rely on, checked against the engine itself with the official `openai`
client: runtime LoRA loading, `/v1/models` listing the adapter under its base, completions and chat
completions for base and adapter, and greedy outputs that differ (so the adapter is really applied).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from helpers.servers import VllmServer, listening_addresses
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tuneloop.platform.procs import ProcessStartError, group_members

pytestmark = pytest.mark.slow

ADAPTER = "tiny-lora"
PROMPT = "The river runs past"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
MAX_TOKENS = 16
# ignore_eos: a random model may emit its end token first; a fixed length makes outputs comparable.
NO_EOS = {"ignore_eos": True}


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_engine_serves_base_and_hot_loaded_adapter(vllm_server: VllmServer, tiny_lora_dir: Path) -> None:
    started = time.monotonic()
    base = vllm_server.model
    client = OpenAI(base_url=vllm_server.base_url, api_key="unused", max_retries=0, timeout=60)

    # Loopback only: every listening socket of the server's process group is on 127.0.0.1.
    addresses = listening_addresses(group_members(vllm_server.process.pid))
    assert addresses and {ip for ip, _ in addresses} == {"127.0.0.1"}, addresses

    loaded = httpx.post(
        f"{vllm_server.url}/v1/load_lora_adapter",
        json={"lora_name": ADAPTER, "lora_path": str(tiny_lora_dir)},
        timeout=60,
    )
    assert loaded.status_code == 200, loaded.text

    models = {m.id: m.model_dump() for m in client.models.list().data}
    assert set(models) == {base, ADAPTER}
    assert models[ADAPTER]["parent"] == base
    assert models[ADAPTER]["root"] == str(tiny_lora_dir)

    def complete(model: str) -> str:
        result = client.completions.create(
            model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0, extra_body=NO_EOS
        )
        assert result.model == model
        assert result.usage is not None and result.usage.completion_tokens == MAX_TOKENS
        return result.choices[0].text

    def chat(model: str) -> str:
        result = client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0.0, extra_body=NO_EOS
        )
        assert result.model == model
        assert result.usage is not None and result.usage.completion_tokens == MAX_TOKENS
        return result.choices[0].message.content or ""

    base_text, adapter_text = complete(base), complete(ADAPTER)
    assert complete(base) == base_text, "greedy decoding of the base model is not deterministic"
    assert adapter_text != base_text, "the adapter did not change the greedy completion"

    base_chat, adapter_chat = chat(base), chat(ADAPTER)
    assert adapter_chat != base_chat, "the adapter did not change the greedy chat answer"

    unload_url = f"{vllm_server.url}/v1/unload_lora_adapter"
    unloaded = httpx.post(unload_url, json={"lora_name": ADAPTER}, timeout=60)
    assert unloaded.status_code == 200, unloaded.text
    assert {m.id for m in client.models.list().data} == {base}

    # Shown with `pytest -s`: the numbers the brief asked to measure, and what the outputs look like.
    print(
        f"\nvLLM ready after {vllm_server.process.ready_seconds:.1f} s; "
        f"test body {time.monotonic() - started:.1f} s; "
        f"peak RSS of the server {_peak_rss_mib(vllm_server.process.pid):.0f} MiB"
        f"\nbase: {base_text!r}\nlora: {adapter_text!r}"
        f"\nbase chat: {base_chat!r}\nlora chat: {adapter_chat!r}"
    )


def test_engine_that_fails_to_start_raises_with_its_log(
    vllm_factory: Callable[..., VllmServer], tiny_model_dir: Path
) -> None:
    # 7 is not a rank vLLM accepts: the server exits at argument parsing, and the error says why.
    with pytest.raises(ProcessStartError, match=r"exited with code \d+(.|\n)*max-lora-rank"):
        vllm_factory(tiny_model_dir, max_lora_rank=7)
