"""Examples to model inputs: SFT with the loss on answers only, UFT as packed causal-LM blocks.

Each format is tokenised the way tuneloop serves it, so the model trains on exactly what it will see:

- chat → `/v1/chat/completions`: the server renders the turns with the tokenizer's chat template and
  `add_generation_prompt=True`, then the model writes the answer and its end-of-turn token. Training
  input = that rendered prompt + the last assistant turn as the template renders it, up to and
  including the first special token after it (the end of turn: `<|im_end|>`, `<|eot_id|>`, `</s>`;
  the eos token where the template emits none). Earlier assistant turns are context, without loss.
- prompt/completion → `/v1/completions`: the server tokenises the prompt with the tokenizer's special
  tokens (BOS where the model has one) and the model continues. Training input = prompt + completion
  + eos, as plain concatenation.

Prompt and answer are tokenised separately and their ids concatenated, so the boundary is exact (a
BPE merge across it cannot move it) and the prompt ids are precisely the served prompt's ids. Labels
are not shifted (transformers shifts inside the model); -100 marks tokens without loss.

UFT trains on everything: each document (text; prompt + completion; a chat rendered whole) ends with
eos, all are joined into one stream per split and cut into blocks of max_length. Documents share
blocks without attention masking between them, the usual trade for no padding.

Over-long SFT examples (data.overlong): `truncate` keeps the prompt's tail (the instruction nearest
the answer and the generation prompt) and the answer's head; the answer keeps at least half of
max_length, the prompt the rest; an example left with no answer token is dropped. `drop` drops it;
`error` refuses the data, listing every such line. For UFT a long document under `truncate` simply
spans several blocks (nothing is lost); `drop` and `error` apply to documents over max_length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypedDict

from tuneloop.platform.data.formats import DataError, Example, report
from tuneloop.platform.data.splits import Splits
from tuneloop.platform.spec import DataSpec, Task

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


class Encoded(TypedDict):
    """One model input: token ids and per-token labels (IGNORE_INDEX where there is no loss)."""

    input_ids: list[int]
    labels: list[int]


def encode_splits(
    splits: Splits, tokenizer: PreTrainedTokenizerBase, data: DataSpec, task: Task
) -> tuple[dict[str, list[Encoded]], dict[str, int]]:
    """Tokenise every split for `task`; return the inputs per split and counts per split."""
    parts: dict[str, list[tuple[list[int], list[int]]]] = {}
    overlong: list[str] = []
    for name, examples in splits.by_name().items():
        parts[name] = [
            sft_parts(ex, tokenizer) if task == "sft" else ([], uft_ids(ex, tokenizer)) for ex in examples
        ]
        overlong += [
            f"{ex.source}:{ex.line}: {len(p) + len(a)} tokens"
            for ex, (p, a) in zip(examples, parts[name], strict=True)
            if len(p) + len(a) > data.max_length
        ]
    if overlong and data.overlong == "error":
        head = f"{len(overlong)} example(s) are longer than data.max_length={data.max_length} tokens "
        head += "(data.overlong: error); shorten them or choose truncate or drop:"
        raise DataError(report(head, overlong))
    # Under truncate a long UFT document just spans blocks, so only SFT examples are ever cut.
    policy = "keep" if task == "uft" and data.overlong == "truncate" else data.overlong
    stats: dict[str, int] = {}
    out: dict[str, list[Encoded]] = {}
    for name, pairs in parts.items():
        long = sum(len(p) + len(a) > data.max_length for p, a in pairs)
        encoded = [e for p, a in pairs if (e := _fit(p, a, data.max_length, policy)) is not None]
        if not encoded:
            raise DataError(f"every {name} example is longer than data.max_length={data.max_length}")
        stats[f"{name}_examples"] = len(pairs)
        stats[f"{name}_overlong"] = long
        stats[f"{name}_dropped"] = len(pairs) - len(encoded)
        stats[f"{name}_truncated"] = long - stats[f"{name}_dropped"] if policy == "truncate" else 0
        out[name] = pack([e["input_ids"] for e in encoded], data.max_length) if task == "uft" else encoded
        stats[f"{name}_inputs"] = len(out[name])
        stats[f"{name}_tokens"] = sum(len(e["input_ids"]) for e in out[name])
        stats[f"{name}_loss_tokens"] = sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in out[name])
    return out, stats


def sft_parts(example: Example, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids ending with the end-of-turn token) of a chat or prompt/completion example."""
    if example.format == "prompt_completion":
        assert example.prompt is not None and example.completion is not None
        prompt = tokenizer.encode(example.prompt, add_special_tokens=True)
        return prompt, [*tokenizer.encode(example.completion, add_special_tokens=False), _eos(tokenizer)]
    if example.format != "chat":
        raise DataError(f"{example.source}:{example.line}: raw text has no answer; use task: uft")
    if not tokenizer.chat_template:
        raise DataError("the base model's tokenizer has no chat template; chat data needs one")
    turns = [{"role": m.role, "content": m.content} for m in example.messages]
    prompt_text = tokenizer.apply_chat_template(turns[:-1], tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(turns, tokenize=False)
    assert isinstance(prompt_text, str) and isinstance(full_text, str)
    tail = full_text[len(prompt_text) :] if full_text.startswith(prompt_text) else ""
    tail_ids = tokenizer.encode(tail, add_special_tokens=False)
    specials = {i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
    end = next((i for i, t in enumerate(tail_ids) if t in specials), None)
    if not tail_ids or end == 0:
        raise DataError(
            f"{example.source}:{example.line}: the model's chat template does not render the prompt as a "
            "prefix of the whole conversation followed by the answer, so the answer cannot be located"
        )
    answer = tail_ids[: end + 1] if end is not None else [*tail_ids, _eos(tokenizer)]
    # Templates render plain text, so BOS (if any) is in the text: no special tokens are added.
    return tokenizer.encode(prompt_text, add_special_tokens=False), answer


def uft_ids(example: Example, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """One UFT document: the example's whole text as the model would read it, then eos."""
    if example.format == "chat":
        turns = [{"role": m.role, "content": m.content} for m in example.messages]
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(turns, tokenize=False)
            assert isinstance(text, str)
            return [*tokenizer.encode(text, add_special_tokens=False), _eos(tokenizer)]
        text = "\n\n".join(m.content for m in example.messages)
    elif example.format == "prompt_completion":
        text = f"{example.prompt}{example.completion}"
    else:
        text = example.text or ""
    return [*tokenizer.encode(text, add_special_tokens=True), _eos(tokenizer)]


def pack(docs: Sequence[list[int]], block: int) -> list[Encoded]:
    """Join the documents into one stream and cut it into blocks; only the last may be shorter."""
    stream = [t for doc in docs for t in doc]
    return [
        {"input_ids": stream[i : i + block], "labels": stream[i : i + block]}
        for i in range(0, len(stream), block)
    ]


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: `input_ids`, `attention_mask` and `labels` (IGNORE_INDEX on padding)."""
    import torch

    width = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        input_ids[row, :n] = torch.tensor(item["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.tensor(item["labels"], dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _fit(prompt: list[int], answer: list[int], max_length: int, policy: str) -> Encoded | None:
    """Apply the over-long policy (module docstring; "keep" for UFT packing) to one example; None: dropped."""
    if len(prompt) + len(answer) > max_length and policy != "keep":
        if policy == "drop":
            return None
        keep_answer = min(len(answer), max(max_length - len(prompt), max_length // 2))
        keep_prompt = min(len(prompt), max_length - keep_answer)
        prompt, answer = prompt[len(prompt) - keep_prompt :], answer[:keep_answer]
        if not answer:
            return None
    return {"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer}


def _eos(tokenizer: PreTrainedTokenizerBase) -> int:
    eos = tokenizer.eos_token_id
    if not isinstance(eos, int):
        raise DataError("the base model's tokenizer has no eos token; tuneloop needs one to end answers")
    return eos
