"""Serving prompt-tuned and P-tuned versions through vLLM's prompt-embeddings input.

`PromptEmbedder` builds the embeddings (virtual tokens first, as peft does), `encode_for_vllm`
turns them into the `prompt_embeds` string of `/v1/completions`, and `prompt_embeds_engine_args`
gives the engine flags that let it take them next to LoRA adapters. `rewrite_request` and
`prepare_version` are the gateway's hook (serve/request/hooks.py); chat.py reshapes answers into chats.
"""

from tuneloop.serve.prompt_embeds.checkpoint import load_input_embeddings, load_virtual_tokens
from tuneloop.serve.prompt_embeds.embedder import PromptEmbedder, encode_for_vllm
from tuneloop.serve.prompt_embeds.engine import LINEAR_PROJECTIONS, prompt_embeds_engine_args
from tuneloop.serve.prompt_embeds.rewrite import prepare_version, rewrite_request

__all__ = [
    "LINEAR_PROJECTIONS",
    "PromptEmbedder",
    "encode_for_vllm",
    "load_input_embeddings",
    "load_virtual_tokens",
    "prepare_version",
    "prompt_embeds_engine_args",
    "rewrite_request",
]
