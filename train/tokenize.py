"""Examples to model inputs: SFT with the loss on answers only, UFT as packed causal-LM blocks.

Each format is tokenised the way tuneloop serves it, so the model trains on exactly what it will see:

- chat → `/v1/chat/completions`: the server renders the turns with the tokenizer's chat template and
  `add_generation_prompt=True`, then the model writes the answer and its end-of-turn token. Training
  input = the whole conversation as the template renders it; the loss is on every assistant turn
  (as TRL and axolotl train), each from where the server's generation prompt for it ends up to and
  including the first special token after it (the end of turn: `<|im_end|>`, `<|eot_id|>`, `</s>`;
  for the last turn the eos token where the template emits none). A turn with `weight: 0` (OpenAI's
  field) is context without loss, like system and user turns.
- prompt/completion → `/v1/completions`: the server tokenises the prompt with the tokenizer's special
  tokens (BOS where the model has one) and the model continues. Training input = prompt + completion
  + eos, as plain concatenation.

Context and answers are tokenised separately and their ids concatenated, so each boundary is exact (a
BPE merge across it cannot move it) and the ids before an answer are the served prompt's ids. Labels
are not shifted (transformers shifts inside the model); -100 marks tokens without loss.

UFT trains on everything: each document (text; prompt + completion; a chat rendered whole) ends with
eos, all are joined into one stream per split and cut into blocks of max_length. Documents share
blocks without attention masking between them, the usual trade for no padding.

Over-long SFT examples (data.overlong): `truncate` keeps the prompt's tail (the instruction nearest
the answer and the generation prompt) and the answer's head, where "answer" starts at the last
trained assistant turn; the answer keeps at least half of max_length, the prompt the rest; an
example left with no loss token is dropped. `drop` drops it;
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
    parts: dict[str, list[Labelled]] = {}
    overlong: list[str] = []
    for name, examples in splits.by_name().items():
        parts[name] = [
            sft_labelled(ex, tokenizer) if task == "sft" else _uft(ex, tokenizer) for ex in examples
        ]
        overlong += [
            f"{ex.source}:{ex.line}: {len(ids)} tokens"
            for ex, (ids, _, _) in zip(examples, parts[name], strict=True)
            if len(ids) > data.max_length
        ]
    if overlong and data.overlong == "error":
        head = f"{len(overlong)} example(s) are longer than data.max_length={data.max_length} tokens "
        head += "(data.overlong: error); shorten them or choose truncate or drop:"
        raise DataError(report(head, overlong))
    # Under truncate a long UFT document just spans blocks, so only SFT examples are ever cut.
    policy = "keep" if task == "uft" and data.overlong == "truncate" else data.overlong
    stats: dict[str, int] = {}
    out: dict[str, list[Encoded]] = {}
    for name, items in parts.items():
        long = sum(len(ids) > data.max_length for ids, _, _ in items)
        encoded = [e for item in items if (e := _fit(item, data.max_length, policy)) is not None]
        if not encoded:
            raise DataError(f"every {name} example is longer than data.max_length={data.max_length}")
        stats[f"{name}_examples"] = len(items)
        stats[f"{name}_overlong"] = long
        stats[f"{name}_dropped"] = len(items) - len(encoded)
        stats[f"{name}_truncated"] = long - stats[f"{name}_dropped"] if policy == "truncate" else 0
        out[name] = pack([e["input_ids"] for e in encoded], data.max_length) if task == "uft" else encoded
        stats[f"{name}_inputs"] = len(out[name])
        stats[f"{name}_tokens"] = sum(len(e["input_ids"]) for e in out[name])
        stats[f"{name}_loss_tokens"] = sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in out[name])
    return out, stats


# (token ids, labels, where the answer part starts for truncation)
Labelled = tuple[list[int], list[int], int]


def sft_labelled(example: Example, tokenizer: PreTrainedTokenizerBase) -> Labelled:
    """One SFT input: ids, labels (IGNORE_INDEX outside trained answers) and the start of the last
    trained answer (truncation keeps the context's tail before it and the head after it)."""
    if example.format == "chat":
        return chat_labelled(example, tokenizer)
    prompt, answer = sft_parts(example, tokenizer)
    return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, len(prompt)


def sft_parts(example: Example, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """(prompt ids as served, answer ids ending with the end-of-turn token) of the example's last answer:
    what evaluation generates from and compares with."""
    if example.format == "prompt_completion":
        assert example.prompt is not None and example.completion is not None
        prompt = tokenizer.encode(example.prompt, add_special_tokens=True)
        return prompt, [*tokenizer.encode(example.completion, add_special_tokens=False), _eos(tokenizer)]
    if example.format != "chat":
        raise DataError(f"{example.source}:{example.line}: raw text has no answer; use task: uft")
    turns = [m.turn() for m in example.messages]
    prompt_text, answer_text = _answer_span(example, tokenizer, turns, len(turns) - 1)
    answer = tokenizer.encode(answer_text, add_special_tokens=False)
    if not _ends_with_special(answer_text, tokenizer):
        answer.append(_eos(tokenizer))
    # Templates render plain text, so BOS (if any) is in the text: no special tokens are added.
    return tokenizer.encode(prompt_text, add_special_tokens=False), answer


def chat_labelled(example: Example, tokenizer: PreTrainedTokenizerBase) -> Labelled:
    """The whole conversation with the loss on every trained assistant turn (module docstring)."""
    turns = [m.turn() for m in example.messages]
    ids: list[int] = []
    labels: list[int] = []
    cut = 0
    done = 0  # characters of the rendered conversation already tokenised
    last = len(turns) - 1
    for i, message in enumerate(example.messages):
        if message.role != "assistant":
            continue
        prompt_text, answer_text = _answer_span(example, tokenizer, turns, i)
        if len(prompt_text) < done:
            raise _not_a_prefix(example)
        context = tokenizer.encode(prompt_text[done:], add_special_tokens=False)
        answer = tokenizer.encode(answer_text, add_special_tokens=False)
        if i == last and not _ends_with_special(answer_text, tokenizer):
            answer.append(_eos(tokenizer))
        ids += context
        labels += [IGNORE_INDEX] * len(context)
        if message.trained:
            cut = len(ids)
        ids += answer
        labels += answer if message.trained else [IGNORE_INDEX] * len(answer)
        done = len(prompt_text) + len(answer_text)
    return ids, labels, cut


def _answer_span(
    example: Example, tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, str]], i: int
) -> tuple[str, str]:
    """(the served prompt before assistant turn i, that turn's text through its end-of-turn token).

    The prompt is the template's rendering of turns[:i] with the generation prompt; the answer is what
    rendering turns[:i+1] adds after it, up to and including the first special token. Both must be
    prefixes of the whole conversation's rendering, or the turn cannot be located exactly."""
    if not tokenizer.chat_template:
        raise DataError("the base model's tokenizer has no chat template; chat data needs one")
    prompt_text = tokenizer.apply_chat_template(turns[:i], tokenize=False, add_generation_prompt=True)
    through = tokenizer.apply_chat_template(turns[: i + 1], tokenize=False)
    whole = tokenizer.apply_chat_template(turns, tokenize=False)
    assert isinstance(prompt_text, str) and isinstance(through, str) and isinstance(whole, str)
    if not (through.startswith(prompt_text) and whole.startswith(through)):
        raise _not_a_prefix(example)
    tail = through[len(prompt_text) :]
    ends = [(at, len(s)) for s in _special_strings(tokenizer) if (at := tail.find(s)) >= 0]
    at, size = min(ends) if ends else (len(tail), 0)
    if at == 0 or not tail.strip():
        raise _not_a_prefix(example)
    return prompt_text, tail[: at + size]


def _not_a_prefix(example: Example) -> DataError:
    return DataError(
        f"{example.source}:{example.line}: the model's chat template does not render each prompt as a "
        "prefix of the whole conversation followed by the answer, so the answers cannot be located"
    )


def _special_strings(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    return [tok.content for tok in tokenizer.added_tokens_decoder.values() if tok.special and tok.content]


def _ends_with_special(text: str, tokenizer: PreTrainedTokenizerBase) -> bool:
    return any(text.endswith(s) for s in _special_strings(tokenizer))


def uft_ids(example: Example, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """One UFT document: the example's whole text as the model would read it, then eos."""
    if example.format == "chat":
        turns = [m.turn() for m in example.messages]
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


def _uft(example: Example, tokenizer: PreTrainedTokenizerBase) -> Labelled:
    ids = uft_ids(example, tokenizer)
    return ids, ids, 0


def _fit(item: Labelled, max_length: int, policy: str) -> Encoded | None:
    """Apply the over-long policy (module docstring; "keep" for UFT packing) to one example; None: dropped."""
    ids, labels, cut = item
    if len(ids) > max_length and policy != "keep":
        if policy == "drop":
            return None
        answer_len = len(ids) - cut
        keep_answer = min(answer_len, max(max_length - cut, max_length // 2))
        keep_prompt = min(cut, max_length - keep_answer)
        ids = ids[cut - keep_prompt : cut + keep_answer]
        labels = labels[cut - keep_prompt : cut + keep_answer]
        if all(t == IGNORE_INDEX for t in labels):
            return None
    return {"input_ids": ids, "labels": labels}


def _eos(tokenizer: PreTrainedTokenizerBase) -> int:
    eos = tokenizer.eos_token_id
    if not isinstance(eos, int):
        raise DataError("the base model's tokenizer has no eos token; tuneloop needs one to end answers")
    return eos
