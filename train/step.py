"""The model step: one optimizer step over micro-batches, shared by the recipe and bench/train_gpu.py.

`train_loop_per_worker` (recipe.py) and the GPU benchmark call the same `optimizer_step` on the same
`CausalLMLoss` module, so what the benchmark measures is what a job runs. What makes it fast:

- **Chunked cross-entropy.** The language-model head and the loss run chunk by chunk of tokens; the
  gradient of each chunk is computed as it goes, so the full (tokens x vocabulary) fp32 logits never
  exist. With a 128k vocabulary and 16k tokens a step, those would be 8 GiB. Models whose head is
  a plain linear layer over the decoder's last hidden state (FUSED_LOSS_MODELS, not a soft-prompt
  method, not an adapted head) take this path; any other model computes its own loss as before.
- **Packing** (`hyperparameters.packing`, see `batches.collate_packed`): the examples of a
  micro-batch share rows, position ids restart at every example and transformers then masks
  attention per example, so the loss equals the padded batch's while padding mostly disappears.
- **Gradient checkpointing** and **torch.compile** of each decoder block (`apply_options`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from tuneloop.train.batches import autocast, input_tokens, scored_tokens
from tuneloop.train.tokenize import IGNORE_INDEX

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from tuneloop.platform.spec import HyperParams

# transformers model types whose causal-LM forward is exactly `lm_head(decoder(...))` plus the mean
# token loss: no logit soft-capping or scaling, no auxiliary losses. Others keep their own forward.
FUSED_LOSS_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# fp32 logits elements per loss chunk (512 MiB): 1,046 tokens of a 128k vocabulary, 8,192 at most.
LOGITS_PER_CHUNK = 2**27
MAX_CHUNK_TOKENS = 8192
# Keys of a batch that go into the model; `tokens` is a count a packed batch carries for the step.
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "labels")


@dataclass
class StepStats:
    """What one optimizer step saw: summed token loss, scored tokens, input tokens, and the gradient
    norm before clipping (over the gradients DDP/FSDP synchronised: the same on every worker)."""

    loss_sum: float
    scored: int
    tokens: int
    grad_norm: float = 0.0


def hf_model(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside a method's model (peft keeps it as its base model)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model  # type: ignore[return-value]


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks (the classes transformers never splits across devices)."""
    names = set(getattr(hf_model(model), "_no_split_modules", None) or [])
    return [module for module in model.modules() if type(module).__name__ in names]


def fused_loss_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(decoder, plain linear head) when the chunked loss computes exactly the model's loss; else None."""
    inner = hf_model(model)
    config = getattr(inner, "config", None)
    if getattr(config, "model_type", None) not in FUSED_LOSS_MODELS:
        return None
    peft_config = getattr(model, "active_peft_config", None) if inner is not model else None
    if peft_config is not None and peft_config.is_prompt_learning:  # peft's forward adds virtual tokens
        return None
    head = inner.get_output_embeddings()
    decoder = getattr(inner, "model", None)
    if type(head) is not torch.nn.Linear or head.bias is not None or decoder is None:
        return None  # e.g. LoRA on lm_head: the head is no longer one weight
    return decoder, head


class CausalLMLoss(torch.nn.Module):
    """The method's model with its loss: forward(**batch) returns an output whose `.loss` is the mean
    over scored tokens. DDP or FSDP wrap this module, so the head and loss run inside their hooks."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.fused = fused_loss_parts(model) is not None

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> Any:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        inputs = {key: value for key, value in inputs.items() if value is not None}
        parts = fused_loss_parts(self.model) if self.fused else None
        if parts is None:
            # No cache when packed: transformers reads restarting positions as boundaries only then.
            nocache = {"use_cache": False} if position_ids is not None else {}
            return self.model(**inputs, labels=labels, **nocache)
        from transformers.modeling_outputs import CausalLMOutput

        decoder, head = parts
        hidden = decoder(**inputs, use_cache=False).last_hidden_state
        # transformers' shift: position t predicts label t+1.
        hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        targets = labels[:, 1:].reshape(-1)
        loss = chunked_cross_entropy(hidden, head.weight, targets)
        return CausalLMOutput(loss=loss)  # type: ignore[arg-type]


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets` (IGNORE_INDEX: no loss), computed
    in chunks of tokens with fp32 softmax, never holding more than one chunk of logits."""
    chunk = max(1, min(MAX_CHUNK_TOKENS, LOGITS_PER_CHUNK // weight.shape[0]))
    kind = hidden.device.type
    # Under autocast (bf16 on GPUs) the matmuls run in the autocast dtype, as the model's head would.
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype
    grads = torch.is_grad_enabled()
    return _ChunkedCrossEntropy.apply(
        hidden, weight, targets, chunk, dtype, grads and hidden.requires_grad, grads and weight.requires_grad
    )


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, its gradients; backward only scales them."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk: int,
        dtype: torch.dtype,
        need_hidden: bool,
        need_weight: bool,
    ) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        count = valid.sum().clamp(min=1).to(torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        w = weight.to(dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start : start + chunk].to(dtype)
                keep = valid[start : start + chunk]
                target = torch.where(keep, targets[start : start + chunk], 0)
                logits = (h @ w.T).float()
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, target[:, None]).squeeze(1)
                total += ((lse - picked) * keep).sum()
                if grad_hidden is None and grad_weight is None:
                    continue
                # d loss / d logits = (softmax - one_hot(target)) / count, zero where there is no loss.
                grad = torch.exp(logits - lse[:, None])
                grad.scatter_add_(1, target[:, None], torch.full_like(picked[:, None], -1.0))
                grad *= (keep / count)[:, None]
                grad_logits = grad.to(dtype)
                if grad_hidden is not None:
                    grad_hidden[start : start + chunk] = (grad_logits @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (grad_logits.T @ h).float()
        ctx.save_for_backward(
            grad_hidden if grad_hidden is not None else torch.empty(0),
            grad_weight if grad_weight is not None else torch.empty(0),
        )
        ctx.has = (grad_hidden is not None, grad_weight is not None, weight.dtype)
        return total / count

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        has_hidden, has_weight, weight_dtype = ctx.has
        return (
            grad_hidden * grad_output.to(grad_hidden.dtype) if has_hidden else None,
            (grad_weight * grad_output).to(weight_dtype) if has_weight else None,
            None,
            None,
            None,
            None,
            None,
        )


def apply_options(model: torch.nn.Module, hp: HyperParams) -> None:
    """The spec's memory and speed options, applied before DDP or FSDP wraps the model."""
    if hp.gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA on a frozen embedding), DDP and FSDP.
        hf_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hp.compile:
        # Block by block: one compiled graph reused by every layer, and FSDP shards the same blocks.
        for block in decoder_blocks(model):
            block.compile()


def optimizer_step(
    module: torch.nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainable: Sequence[torch.nn.Parameter],
    device: torch.device,
    max_grad_norm: float,
) -> StepStats:
    """Forward and backward over `batches` (gradient accumulation; DDP/FSDP sync on the last only),
    clip, step the optimizer and the schedule."""
    stats = StepStats(0.0, 0, 0)
    for index, cpu_batch in enumerate(batches):
        batch = {key: cpu_batch[key].to(device) for key in MODEL_INPUTS if key in cpu_batch}
        with _sync(module, last=index == len(batches) - 1), autocast(device):
            loss = module(**batch).loss
            (loss / len(batches)).backward()
        scored = scored_tokens(cpu_batch["labels"])
        stats.loss_sum += float(loss.detach()) * scored
        stats.scored += scored
        stats.tokens += input_tokens(cpu_batch)
    norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    full = getattr(norm, "full_tensor", None)  # FSDP2: a DTensor over the shards
    stats.grad_norm = float(full() if full is not None else norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return stats


def _sync(module: torch.nn.Module, *, last: bool) -> Any:
    """Gradient all-reduce (DDP) or reduce-scatter (FSDP) on the last micro-batch of a step only."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(last)
        return nullcontext()
    if isinstance(module, DistributedDataParallel) and not last:
        return module.no_sync()
    return nullcontext()
