"""Final evaluation on the held-out test split: the tuned model and its base, on the same examples.

Always: loss and perplexity, token-weighted over the tokens that carry loss (the answers for SFT,
everything for UFT), on the test inputs exactly as training tokenised them. Where every test
example has a reference answer (chat or prompt/completion data): exact match and token F1 of the
model's greedy answer to each test prompt, with at most `max_new_tokens` new tokens. Prompts are
the token ids the server would see (`sft_parts`), so the score is the one a client would get.
Answers are compared SQuAD-style: lower-cased, punctuation and English articles removed,
whitespace collapsed; F1 over the remaining words.

The base model's scores sit beside the tuned ones under a `base_` prefix, which is what a reader
(and the promotion gate) needs to tell whether the training helped at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# Re-exported for existing callers: the comparison lives in platform/answers.py (shared with monitoring).
from tuneloop.platform.answers import exact_match as exact_match
from tuneloop.platform.answers import normalize_answer as normalize_answer
from tuneloop.platform.answers import token_f1 as token_f1
from tuneloop.platform.data.formats import Example, reference_answer
from tuneloop.platform.spec import JobSpec
from tuneloop.train.batches import loss_sums
from tuneloop.train.tokenize import Encoded, sft_parts

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

MAX_NEW_TOKENS = 64
GENERATE_BATCH = 8
# Metrics in the order tables print them; `base_<name>` is the base model's value.
SCORES = ("loss", "perplexity", "exact_match", "token_f1")


def evaluate_pair(
    load_tuned: Callable[[], torch.nn.Module],
    load_base: Callable[[], torch.nn.Module],
    *,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    inputs: Sequence[Encoded],
    max_length: int,
    batch_size: int,
    device: str | torch.device,
    max_new_tokens: int | None = None,
) -> dict[str, float]:
    """Test metrics of the tuned model, with `base_`-prefixed ones of the base model beside them.

    The models are loaded one after the other (and dropped) so only one is in memory at a time.
    """
    scores = {}
    for prefix, load in (("", load_tuned), ("base_", load_base)):
        found = score(
            load(),
            tokenizer=tokenizer,
            examples=examples,
            inputs=inputs,
            max_length=max_length,
            batch_size=batch_size,
            device=device,
            max_new_tokens=max_new_tokens,
        )
        scores.update({f"{prefix}{name}": value for name, value in found.items()})
    scores["test_examples"] = float(len(examples))
    return scores


def evaluate_result(
    result_dir: Path,
    *,
    spec: JobSpec,
    model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    test: Sequence[Example],
    inputs: Sequence[Encoded],
) -> dict[str, float]:
    """Test metrics of a saved result, loaded back the way it was published, beside its base model."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.train import methods

    device = "cuda" if spec.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    method = methods.get(spec.method.name)

    def on_device(model: torch.nn.Module) -> torch.nn.Module:
        return model if device == "cpu" else model.to(device)

    return evaluate_pair(
        lambda: on_device(method.load(model_dir, result_dir)),
        lambda: on_device(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto").eval()),
        tokenizer=tokenizer,
        examples=test,
        inputs=inputs,
        max_length=spec.data.max_length,
        batch_size=spec.hyperparameters.batch_size,
        device=device,
    )


def score(
    model: torch.nn.Module,
    *,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    inputs: Sequence[Encoded],
    max_length: int,
    batch_size: int,
    device: str | torch.device,
    max_new_tokens: int | None = None,
) -> dict[str, float]:
    """Loss and perplexity on `inputs`; exact match and token F1 where `examples` have answers."""
    pad_id = pad_token_id(tokenizer)
    total, count = loss_sums(model, inputs, batch_size=batch_size, pad_id=pad_id, device=device)
    loss = total / count if count else math.nan
    found = {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
    references = [reference_answer(example) for example in examples]
    if examples and all(ref is not None for ref in references):
        answers = [ref for ref in references if ref is not None]
        if max_new_tokens is None:
            longest = max(len(tokenizer.encode(ref, add_special_tokens=False)) for ref in answers)
            max_new_tokens = min(MAX_NEW_TOKENS, longest + 1)  # + the end-of-turn token
        predictions = generate_answers(
            model,
            tokenizer,
            examples,
            max_length=max_length,
            max_new_tokens=max_new_tokens,
            device=device,
        )
        found["exact_match"] = sum(map(exact_match, predictions, answers)) / len(answers)
        found["token_f1"] = sum(map(token_f1, predictions, answers)) / len(answers)
    return found


def generate_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    max_length: int,
    max_new_tokens: int,
    device: str | torch.device,
    batch_size: int = GENERATE_BATCH,
) -> list[str]:
    """Greedy answers to the examples' prompts (left-padded batches; prompts keep their tail)."""
    import torch
    from transformers import GenerationConfig

    pad_id = pad_token_id(tokenizer)
    stop = sorted({tokenizer.eos_token_id, *_generation_eos(model)} - {None})
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id, eos_token_id=stop
    )
    keep = max(1, max_length - max_new_tokens)
    prompts = [sft_parts(example, tokenizer)[0][-keep:] for example in examples]
    answers: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(len(p) for p in chunk)
            input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)  # type: ignore[operator]
            # Models fed embeddings (soft prompts) may return only the new tokens.
            has_prompt = out.shape[1] >= width and torch.equal(out[:, :width], input_ids)
            new = out[:, width:] if has_prompt else out
            answers += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        model.train(was_training)
    return answers


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad id batches use: the tokenizer's pad token, else its eos (padding carries no loss)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if not isinstance(pad, int):
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return pad


def format_table(metrics: dict[str, float]) -> str:
    """The tuned-vs-base table `tuneloop train` prints at the end."""
    rows = [name for name in SCORES if name in metrics]
    lines = [f"{'test metric':<14} {'tuned':>10} {'base':>10}"]
    for name in rows:
        lines.append(f"{name:<14} {metrics[name]:>10.4f} {metrics.get('base_' + name, math.nan):>10.4f}")
    if "test_examples" in metrics:
        lines.append(f"({int(metrics['test_examples'])} test examples)")
    return "\n".join(lines)


def _generation_eos(model: torch.nn.Module) -> list[int]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    return [eos] if isinstance(eos, int) else list(eos or [])
