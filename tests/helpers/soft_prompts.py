"""Tiny prompt-tuning and P-tuning adapters, really trained with peft in about a second.

The tiny random Llama of `tiny_model.py` (weights drawn with std 0.02) hardly attends to anything:
its residual stream is the last token's embedding, so it repeats that token and no soft prompt
can steer it. `build_steerable_llama` scales its weights up so attention carries information from
earlier positions; then a handful of optimiser steps teach virtual tokens to make the model say a
fixed target, which is what the serving tests need: adapters that visibly change greedy output.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from helpers.tiny_model import build_tiny_llama

if TYPE_CHECKING:
    from peft import PeftModel

SoftPromptKind = Literal["prompt_tuning", "p_tuning"]
LAYER_SCALE, EMBEDDING_SCALE = 10.0, 5.0


def build_steerable_llama(dest: Path, *, seed: int = 0) -> Path:
    """The tiny Llama of `build_tiny_llama`, with weights scaled so its output depends on its input."""
    import torch
    from transformers import LlamaForCausalLM

    build_tiny_llama(dest, seed=seed)
    model = LlamaForCausalLM.from_pretrained(str(dest), dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("model.layers.") and param.dim() == 2:
                param.mul_(LAYER_SCALE)
            elif "embed_tokens" in name:  # tied: this also scales the output head, widening logit gaps
                param.mul_(EMBEDDING_SCALE)
    model.save_pretrained(dest, safe_serialization=True)
    return dest


@contextmanager
def _one_thread() -> Iterator[None]:
    # A ~0.5M-parameter model is far faster on one thread than fighting for cores with servers.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_soft_prompt(
    model_dir: Path,
    kind: SoftPromptKind,
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    dest: Path,
    *,
    num_virtual_tokens: int = 8,
    max_steps: int = 600,
    seed: int = 0,
) -> PeftModel:
    """Train a soft prompt on (prompt ids, target ids) pairs until greedy decoding gives every target.

    Saves the adapter to `dest` and returns the trained model in eval mode (still computing its
    virtual tokens the way training did: for P-tuning, through the prompt encoder).
    """
    import torch
    from peft import PromptEncoderConfig, PromptTuningConfig, get_peft_model
    from transformers import LlamaForCausalLM

    config: Any
    if kind == "prompt_tuning":
        config = PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, prompt_tuning_init="SAMPLE_VOCAB"
        )
        lr = 0.1
    else:
        config = PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, encoder_hidden_size=64
        )
        lr = 0.01
    torch.manual_seed(seed)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32), config)
    input_ids, attention, labels = _batch(examples, pad_id=int(model.config.pad_token_id))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    with _one_thread():
        for _ in range(max_steps):
            out = model(input_ids=input_ids, attention_mask=attention, labels=labels)
            # Position i predicts token i+1; the model's logits also cover the virtual tokens.
            predicted = out.logits[:, num_virtual_tokens:-1].argmax(-1)
            targets = labels[:, 1:]
            if bool(((predicted == targets) | (targets == -100)).all()) and out.loss.item() < 1.0:
                break
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    model.save_pretrained(str(dest), safe_serialization=True)
    return model


def _batch(examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded input ids, attention mask and labels (-100 on prompt and padding)."""
    import torch

    rows = [([*prompt, *target], [-100] * len(prompt) + list(target)) for prompt, target in examples]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    return input_ids, attention, labels


# The task both serving tests teach: answer TARGET (then end) to PROMPT and to the chat MESSAGES.
PROMPT = "The river runs past"
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "Where does the river go?"}]
TARGET = " the old mill by the bridge"
MAX_TOKENS = 12
KINDS: tuple[SoftPromptKind, ...] = ("prompt_tuning", "p_tuning")


@dataclass(frozen=True)
class RiverTask:
    """The task as token ids of the model's tokenizer, and both soft prompts trained on it."""

    prompt_ids: list[int]
    chat_ids: list[int]
    trained: dict[str, PeftModel]  # by kind
    folders: dict[str, Path]  # where each is saved, by kind


def train_river_prompts(model_dir: Path, tokenizer: Any, dest: Path) -> RiverTask:
    """Train a prompt-tuning and a P-tuning adapter on the river task; saved to dest/<kind>."""
    prompt_ids = list(tokenizer(PROMPT)["input_ids"])
    chat_text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    chat_ids = list(tokenizer(str(chat_text), add_special_tokens=False)["input_ids"])
    target = list(tokenizer(TARGET + str(tokenizer.eos_token), add_special_tokens=False)["input_ids"])
    examples = [(prompt_ids, target), (chat_ids, target)]
    folders = {kind: dest / kind for kind in KINDS}
    trained = {kind: train_soft_prompt(model_dir, kind, examples, folder) for kind, folder in folders.items()}
    return RiverTask(prompt_ids, chat_ids, trained, folders)


def hf_greedy(model: Any, ids: Sequence[int], max_new_tokens: int = MAX_TOKENS) -> list[int]:
    """Greedy new token ids from a transformers or peft model's own `generate` (EOS included)."""
    import torch

    input_ids = torch.tensor([list(ids)])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.config.pad_token_id,
        )
    return [int(t) for t in out[0, input_ids.shape[1] :]]
