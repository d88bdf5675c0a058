"""Chat SFT on every assistant turn: the loss masks, OpenAI's `weight` and `name`, tool calls refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneloop.platform.data import DataError, Splits, read_examples
from tuneloop.platform.spec import DataSpec
from tuneloop.train.tokenize import IGNORE_INDEX, encode_splits, sft_parts

SYSTEM = {"role": "system", "content": "You help with bikes."}
CONVERSATION = [
    SYSTEM,
    {"role": "user", "content": "My chain squeaks."},
    {"role": "assistant", "content": "Oil it lightly."},
    {"role": "user", "content": "Which oil?"},
    {"role": "assistant", "content": "Any wet lube.", "weight": 0},
    {"role": "user", "content": "And then?"},
    {"role": "assistant", "content": "Wipe off the excess.", "name": "mechanic"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def encode(tmp_path: Path, tokenizer: Any, messages: list[dict[str, Any]], **data: Any) -> dict[str, Any]:
    (example,) = read_examples(write(tmp_path / "chat.jsonl", [{"messages": messages}]))
    spec = DataSpec(train=tmp_path / "chat.jsonl", **data)
    splits = Splits(train=[example], validation=[example], test=[example])
    encoded, stats = encode_splits(splits, tokenizer, spec, "sft")
    return {"item": encoded["train"][0], "stats": stats, "example": example}


def runs(item: dict[str, list[int]]) -> list[tuple[int, int]]:
    """(start, end) of every run of positions that carry loss."""
    found: list[tuple[int, int]] = []
    for i, label in enumerate(item["labels"]):
        if label == IGNORE_INDEX:
            continue
        if found and found[-1][1] == i:
            found[-1] = (found[-1][0], i + 1)
        else:
            found.append((i, i + 1))
    return found


def test_every_trained_assistant_turn_carries_loss_and_nothing_else(tmp_path: Path, tokenizer: Any) -> None:
    out = encode(tmp_path, tokenizer, CONVERSATION)
    item = out["item"]
    spans = runs(item)
    # The loss is on the first and third answers, each with its end-of-turn token; the weight-0 answer,
    # the system and user turns and the template's markup carry none.
    assert [tokenizer.decode(item["input_ids"][a:b]) for a, b in spans] == [
        "Oil it lightly.<|im_end|>",
        "Wipe off the excess.<|im_end|>",
    ]
    assert all(item["labels"][a:b] == item["input_ids"][a:b] for a, b in spans)
    assert out["stats"]["train_loss_tokens"] == sum(b - a for a, b in spans)
    # The input is the whole conversation as the template renders it (up to the last end of turn).
    turns = [{k: v for k, v in m.items() if k != "weight"} for m in CONVERSATION]
    whole = tokenizer.apply_chat_template(turns, tokenize=False)
    assert tokenizer.decode(item["input_ids"]) == whole.removesuffix("\n")
    assert "Any wet lube.<|im_end|>" in tokenizer.decode(item["input_ids"])
    # Before each trained answer stand exactly the ids the server gives the model for that turn.
    for (start, _), turn in zip(spans, (2, 6), strict=True):
        served = tokenizer.apply_chat_template(turns[:turn], tokenize=False, add_generation_prompt=True)
        assert item["input_ids"][:start] == tokenizer.encode(served, add_special_tokens=False)


def test_the_last_answer_is_what_evaluation_compares(tmp_path: Path, tokenizer: Any) -> None:
    out = encode(tmp_path, tokenizer, CONVERSATION)
    prompt, answer = sft_parts(out["example"], tokenizer)
    assert tokenizer.decode(answer) == "Wipe off the excess.<|im_end|>"
    assert out["item"]["input_ids"] == prompt + answer


def test_a_weight_zero_last_turn_leaves_the_earlier_answers_trained(tmp_path: Path, tokenizer: Any) -> None:
    messages = [*CONVERSATION[:-1], {"role": "assistant", "content": "Done.", "weight": 0}]
    item = encode(tmp_path, tokenizer, messages)["item"]
    assert [tokenizer.decode(item["input_ids"][a:b]) for a, b in runs(item)] == ["Oil it lightly.<|im_end|>"]


def test_truncation_keeps_the_last_trained_answer_and_the_context_before_it(
    tmp_path: Path, tokenizer: Any
) -> None:
    long_user = {"role": "user", "content": "words " * 60}
    messages = [long_user, {"role": "assistant", "content": "First."}, *CONVERSATION[5:]]
    full = encode(tmp_path, tokenizer, messages, max_length=4096)["item"]
    cut = encode(tmp_path, tokenizer, messages, max_length=32)["item"]
    assert len(full["input_ids"]) > 32 and len(cut["input_ids"]) == 32
    # The tail of the full input: the last answer whole, the context right before it.
    assert cut["input_ids"] == full["input_ids"][-32:] and cut["labels"] == full["labels"][-32:]
    assert tokenizer.decode(cut["input_ids"][runs(cut)[-1][0] :]) == "Wipe off the excess.<|im_end|>"


def test_names_and_weights_are_part_of_an_example(tmp_path: Path) -> None:
    (example,) = read_examples(write(tmp_path / "c.jsonl", [{"messages": CONVERSATION}]))
    assert [m.weight for m in example.messages] == [None, None, None, None, 0, None, None]
    assert example.messages[-1].turn() == {
        "role": "assistant",
        "content": "Wipe off the excess.",
        "name": "mechanic",
    }
    assert example.record() == {"messages": CONVERSATION}
    plain = [{k: v for k, v in m.items() if k not in ("weight", "name")} for m in CONVERSATION]
    (other,) = read_examples(write(tmp_path / "d.jsonl", [{"messages": plain}]))
    assert other.key() != example.key(), "a weight or name makes a different training example"


def test_openai_fields_are_accepted_or_refused_by_name(tmp_path: Path) -> None:
    user = {"role": "user", "content": "hi"}
    rows = [
        {"messages": CONVERSATION},  # 1: fine
        {"messages": [user, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}]},  # 2
        {"messages": [user, {"role": "tool", "content": "42"}, {"role": "assistant", "content": "a"}]},  # 3
        {"messages": [user, {"role": "assistant", "content": "a"}], "tools": []},  # 4
        {"messages": [{**user, "weight": 1}, {"role": "assistant", "content": "a"}]},  # 5
        {"messages": [user, {"role": "assistant", "content": "a", "weight": 0.5}]},  # 6
        {"messages": [user, {"role": "assistant", "content": "a", "weight": 0}]},  # 7
        {"messages": [{**user, "name": "bad name!"}, {"role": "assistant", "content": "a"}]},  # 8
        {"messages": [user, {"role": "assistant", "content": "a", "weight": True}]},  # 9
    ]
    path = write(tmp_path / "c.jsonl", rows)
    with pytest.raises(DataError) as exc:
        read_examples(path)
    lines = {int(line.split(":")[1]): line for line in str(exc.value).splitlines()[1:]}
    assert sorted(lines) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert "has 'tool_calls': tuneloop does not train tool calls" in lines[2]
    assert "has role 'tool': tuneloop does not train tool calls" in lines[3]
    assert "'tools': tuneloop does not train tool calls" in lines[4]
    assert "weight is only for assistant turns" in lines[5]
    assert "weight must be 0 (context only) or 1 (trained), got 0.5" in lines[6]
    assert "every assistant turn has weight 0" in lines[7]
    assert "name must be 1-64 letters" in lines[8]
    assert "got True" in lines[9]
