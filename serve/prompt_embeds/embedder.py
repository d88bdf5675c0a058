"""Prompts and chats as the prompt embeddings of one base model, learned virtual tokens first.

peft's prompt tuning and P-tuning feed the model `cat(virtual_tokens, embed(input_ids))`. vLLM
has no prompt adapters, but with `--enable-prompt-embeds` its `/v1/completions` takes the whole
input as embeddings, so the gateway builds that same tensor here and vLLM runs the rest.

Chats are rendered with the tokenizer's chat template here too and then sent to `/v1/completions`:
vLLM's chat endpoint takes embeddings only as a content part inside a message, i.e. after the
template's role header, not in front of the whole input where peft put the virtual tokens.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.serve.prompt_embeds.checkpoint import load_input_embeddings, load_virtual_tokens

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


class PromptEmbedder:
    """The input embeddings and tokenizer of one base model; everything else of it stays on disk.

    Holds the whole (vocab, hidden) matrix in memory (e.g. ~1 GiB for a 128k x 4096 bf16 table).
    """

    def __init__(self, base_model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.base_model_dir = Path(base_model_dir)
        self.embeddings: torch.Tensor = load_input_embeddings(self.base_model_dir)
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(str(self.base_model_dir))

    @property
    def hidden_size(self) -> int:
        return int(self.embeddings.shape[1])

    def load_virtual_tokens(self, adapter_dir: Path) -> torch.Tensor:
        """The (num_virtual_tokens, hidden) tensor of a saved peft prompt-tuning or P-tuning adapter.

        Raises `ArtifactError` for other adapter types or one made for a base of another width.
        Adapter versions are immutable, so callers may cache the result per version.
        """
        return load_virtual_tokens(Path(adapter_dir), self.hidden_size)

    def completion_embeds(self, prompt: str, virtual: torch.Tensor | None = None) -> torch.Tensor:
        """(n_virtual + n_tokens, hidden) for a text prompt, tokenized as vLLM tokenizes one."""
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return self.embed_ids(ids, virtual)

    def chat_embeds(
        self,
        messages: Sequence[Mapping[str, Any]],
        virtual: torch.Tensor | None = None,
        *,
        add_generation_prompt: bool = True,
    ) -> torch.Tensor:
        """(n_virtual + n_tokens, hidden) for a chat rendered with the model's chat template."""
        text = self.tokenizer.apply_chat_template(
            [dict(message) for message in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        # The template writes any BOS itself (vLLM's chat endpoint does not add special tokens either).
        ids = self.tokenizer(str(text), add_special_tokens=False)["input_ids"]
        return self.embed_ids(ids, virtual)

    def embed_ids(self, ids: Sequence[int], virtual: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of token ids, with `virtual` in front of all of them as peft puts it."""
        import torch

        tokens = self.embeddings[torch.tensor(list(ids), dtype=torch.long)]
        if virtual is None:
            return tokens
        if virtual.dim() != 2 or virtual.shape[1] != self.hidden_size:
            raise ValueError(f"virtual tokens must be (n, {self.hidden_size}); got {tuple(virtual.shape)}")
        return torch.cat([virtual.to(tokens.dtype), tokens], dim=0)


def encode_for_vllm(tensor: torch.Tensor) -> str:
    """The string vLLM takes as `prompt_embeds`: base64 of `torch.save` of a 2-D float tensor.

    vLLM loads it with `weights_only=True` and casts it to the served dtype; its hidden size must
    be the model's, and its length counts against `--max-model-len` like prompt tokens do.
    """
    import torch

    if tensor.dim() != 2 or not tensor.is_floating_point():
        raise ValueError(f"expected a 2-D float tensor, got shape {tuple(tensor.shape)} {tensor.dtype}")
    buffer = io.BytesIO()
    # torch.save writes a view's whole underlying storage: a compact copy sends only these rows.
    torch.save(tensor.detach().to("cpu").contiguous().clone(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
