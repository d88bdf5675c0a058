"""The data layer: formats and their validation, splits and their hash, tokenisation and batching."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tuneloop.platform.data import (
    DataError,
    Example,
    Splits,
    data_hash,
    make_splits,
    read_examples,
    reference_answer,
)
from tuneloop.platform.spec import DataSpec
from tuneloop.train.tokenize import IGNORE_INDEX, collate, encode_splits, pack, sft_parts

CHAT = {
    "messages": [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "General Kenobi"},
    ]
}


def write(path: Path, rows: list[Any]) -> Path:
    """One line per row: strings are written as they are (to make broken lines), the rest as JSON."""
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def qa(i: int) -> dict[str, str]:
    return {"prompt": f"Question {i}: what is {i} plus one?", "completion": f" {i + 1}"}


def bad_lines(exc: pytest.ExceptionInfo[DataError], path: Path) -> set[int]:
    return {int(n) for n in re.findall(rf"{re.escape(str(path))}:(\d+):", str(exc.value))}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


# --- formats -------------------------------------------------------------------------------------


def test_every_format_parses_with_its_reference_answer(tmp_path: Path) -> None:
    system = {"role": "system", "content": "Be brief."}
    chat = {"messages": [system, *CHAT["messages"]]}
    rows = {"chat": chat, "prompt_completion": qa(1), "text": {"text": "Once upon a time."}}
    answers = {"chat": "General Kenobi", "prompt_completion": " 2", "text": None}
    for fmt, row in rows.items():
        (example,) = read_examples(write(tmp_path / f"{fmt}.jsonl", [row]))
        assert example.format == fmt and example.line == 1
        assert reference_answer(example) == answers[fmt]
    (chat_example,) = read_examples(tmp_path / "chat.jsonl")
    assert [m.role for m in chat_example.messages] == ["system", "user", "assistant"]


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    examples = read_examples(write(tmp_path / "d.jsonl", ["", qa(1), "   ", qa(2)]))
    assert [ex.line for ex in examples] == [2, 4]


def test_every_bad_line_is_reported_at_once(tmp_path: Path) -> None:
    user = {"role": "user", "content": "hi"}
    path = write(
        tmp_path / "chat.jsonl",
        [
            CHAT,
            '{"messages": [{"role": "user", "content": "hi"}',  # 2: truncated
            {"messages": CHAT["messages"], "weight": 1},  # 3: unknown key
            CHAT,
            {"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]},  # 5
            {"messages": [user]},  # 6: does not end with the assistant
            {"messages": [user, {"role": "assistant", "content": "  "}]},  # 7: empty answer
            {"messages": [user, {"role": "assistant", "content": 3}]},  # 8: wrong type
            "[1, 2]",  # 9: not an object
            "{not json}",  # 10
        ],
    )
    with pytest.raises(DataError) as exc:
        read_examples(path)
    assert bad_lines(exc, path) == {2, 3, 5, 6, 7, 8, 9, 10}
    message = str(exc.value)
    for reason in ("truncated JSON", "unknown key 'weight'", "'bot' is not one of", "must be the assistant"):
        assert reason in message
    for reason in ("is empty", "must be a string, got a number", "expected a JSON object", "invalid JSON"):
        assert reason in message


def test_wrong_keys_are_named(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [qa(1), {"prompt": "q", "answer": "a"}, {"input": "x"}])
    with pytest.raises(DataError, match=r"unknown key 'answer'.*missing key 'completion'") as exc:
        read_examples(path)
    assert bad_lines(exc, path) == {2, 3}
    assert "no known keys" in str(exc.value)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match="holds no examples"):
        read_examples(path)


def test_too_few_examples_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds 3 examples; at least 8"):
        read_examples(write(tmp_path / "d.jsonl", [qa(i) for i in range(3)]), min_examples=8)


def test_mixed_formats_name_the_minority_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl", [qa(1), CHAT, qa(2), {"text": "t"}, qa(3), {"prompt": "p", "text": "t"}]
    )
    with pytest.raises(DataError, match="chat line in a file of mostly prompt_completion lines") as exc:
        read_examples(path)
    assert bad_lines(exc, path) == {2, 4, 6}
    assert "keys of several formats" in str(exc.value)


def test_overlong_lines_are_refused_and_reading_resumes_after_them(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [qa(1), {"text": "x" * 500}, qa(2), {"text": "y" * 9000}, "{bad"])
    with pytest.raises(DataError, match="longer than 200 bytes") as exc:
        read_examples(path, max_line_bytes=200)
    assert bad_lines(exc, path) == {2, 4, 5}


def test_the_listing_is_capped(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", ["{"] * 60)
    with pytest.raises(DataError, match=r"60 bad line\(s\)") as exc:
        read_examples(path)
    assert len(bad_lines(exc, path)) == 50 and "... and 10 more" in str(exc.value)


def test_sft_refuses_raw_text_and_points_to_uft(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(DataError, match="use task: uft"):
        read_examples(path, task="sft")
    assert len(read_examples(path, task="uft")) == 2


def test_prompt_key_names_the_question_whatever_its_answer(tmp_path: Path) -> None:
    system = {"role": "system", "content": "Be brief."}
    rows = [
        qa(1),
        {**qa(1), "completion": " another answer"},
        qa(2),
    ]
    first, corrected, other = read_examples(write(tmp_path / "pc.jsonl", rows))
    assert first.prompt_key() == corrected.prompt_key() != other.prompt_key()
    assert first.key() != corrected.key()

    def with_answer(answer: str, *earlier: dict[str, str]) -> dict[str, Any]:
        return {"messages": [*earlier, CHAT["messages"][0], {"role": "assistant", "content": answer}]}

    chats = [with_answer("General Kenobi"), with_answer("Hi"), with_answer("Hi", system)]
    kenobi, hi, briefly = read_examples(write(tmp_path / "chat.jsonl", chats))
    assert kenobi.prompt_key() == hi.prompt_key() and kenobi.key() != hi.key()
    assert briefly.prompt_key() != hi.prompt_key()  # every turn but the last is the question
    (as_text,) = read_examples(write(tmp_path / "text.jsonl", [{"text": "Hello there"}]))
    (as_prompt,) = read_examples(write(tmp_path / "p.jsonl", [{"prompt": "Hello there", "completion": "x"}]))
    assert as_text.prompt_key() != as_prompt.prompt_key()  # the format is part of the key


def test_record_reads_back_as_the_same_example(tmp_path: Path) -> None:
    system = {"role": "system", "content": "Sé breve."}
    files: dict[str, list[dict[str, Any]]] = {
        "chat": [{"messages": [system, *CHAT["messages"]]}, CHAT],
        "prompt_completion": [qa(1), qa(2)],
        "text": [{"text": "Once upon a time."}, {"text": "Érase una vez."}],
    }
    for name, rows in files.items():
        examples = read_examples(write(tmp_path / f"{name}.jsonl", rows))
        assert [ex.record() for ex in examples] == rows
        again = read_examples(write(tmp_path / f"{name}-again.jsonl", [ex.record() for ex in examples]))
        assert [ex.key() for ex in again] == [ex.key() for ex in examples]
        assert {ex.format for ex in again} == {name}


# --- splits --------------------------------------------------------------------------------------


def split(path: Path, **kwargs: Any) -> Splits:
    return make_splits(DataSpec(train=path, **kwargs), "sft")


def test_split_is_deterministic_and_respects_fractions(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [qa(i) for i in range(100)])
    first, again, other = split(path, seed=1), split(path, seed=1), split(path, seed=2)
    assert (len(first.train), len(first.validation), len(first.test)) == (80, 10, 10)
    assert first.by_name() == again.by_name()
    assert first.test != other.test
    assert len(split(path, split=(0.5, 0.3, 0.2)).validation) == 30
    # The split depends on content and seed, not on line order.
    shuffled = write(tmp_path / "r.jsonl", [qa(i) for i in reversed(range(100))])
    assert {e.key() for e in split(shuffled, seed=1).test} == {e.key() for e in first.test}


def test_split_does_not_depend_on_python_hash_seed(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [qa(i) for i in range(40)])
    code = (
        "import sys; from pathlib import Path; from tuneloop.platform.data import make_splits; "
        "from tuneloop.platform.spec import DataSpec; "
        "s = make_splits(DataSpec(train=Path(sys.argv[1])), 'sft'); "
        "print([e.line for e in s.test], s.stats['data_hash'])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code, str(path)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


def test_duplicates_are_removed_and_never_straddle_splits(tmp_path: Path) -> None:
    rows = [qa(i % 30) for i in range(60)]  # every example twice
    splits = split(write(tmp_path / "d.jsonl", rows))
    keys = [{e.key() for e in examples} for examples in splits.by_name().values()]
    assert sum(map(len, keys)) == 30 and not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert splits.stats["duplicates_removed"] == 30


def test_overlap_between_given_files_is_refused_with_line_numbers(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", [qa(i) for i in range(20)])
    validation = write(tmp_path / "val.jsonl", [qa(100), qa(5)])
    test = write(tmp_path / "test.jsonl", [qa(101), qa(102), qa(100)])
    with pytest.raises(DataError, match="2 example") as exc:
        split(train, validation=validation, test=test)
    assert f"{validation}:2 repeats {train}:6" in str(exc.value)
    assert f"{test}:3 repeats {validation}:1" in str(exc.value)


def test_given_files_are_used_and_missing_splits_carved(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", [qa(i) for i in range(20)])
    validation = write(tmp_path / "val.jsonl", [qa(100), qa(101)])
    splits = split(train, validation=validation)
    assert [e.line for e in splits.validation] == [1, 2]
    assert (len(splits.train), len(splits.test)) == (18, 2)


def test_an_empty_held_out_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="validation split would be empty"):
        split(write(tmp_path / "d.jsonl", [qa(i) for i in range(10)]), min_examples=1, split=(0.9, 0.0, 0.1))


def test_data_hash_is_stable_and_sensitive_to_one_character(tmp_path: Path) -> None:
    rows = [qa(i) for i in range(20)]
    path = write(tmp_path / "d.jsonl", rows)
    assert data_hash(split(path)) == data_hash(split(path)) == split(path).stats["data_hash"]
    rows[7] = {**rows[7], "completion": rows[7]["completion"] + "!"}
    assert data_hash(split(write(tmp_path / "e.jsonl", rows))) != data_hash(split(path))


# --- tokenisation --------------------------------------------------------------------------------


def spec(tmp_path: Path, **kwargs: Any) -> DataSpec:
    return DataSpec(train=tmp_path / "unused.jsonl", min_examples=1, **kwargs)


def only(example: Example) -> Splits:
    return Splits(train=[example], validation=[example], test=[example])


def test_sft_chat_loss_is_on_the_answer_and_end_of_turn_only(tmp_path: Path, tokenizer: Any) -> None:
    (example,) = read_examples(write(tmp_path / "c.jsonl", [CHAT]))
    encoded, stats = encode_splits(only(example), tokenizer, spec(tmp_path), "sft")
    item = encoded["train"][0]
    answer = [t for t, label in zip(item["input_ids"], item["labels"], strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(answer) == "General Kenobi<|im_end|>"
    prompt_len = len(item["input_ids"]) - len(answer)
    assert item["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    served = tokenizer.apply_chat_template(CHAT["messages"][:1], tokenize=False, add_generation_prompt=True)
    assert item["input_ids"][:prompt_len] == tokenizer.encode(served, add_special_tokens=False)
    assert stats["train_loss_tokens"] == len(answer)


def test_sft_prompt_completion_loss_is_on_the_completion_and_eos(tmp_path: Path, tokenizer: Any) -> None:
    (example,) = read_examples(write(tmp_path / "p.jsonl", [qa(41)]))
    item = encode_splits(only(example), tokenizer, spec(tmp_path), "sft")[0]["train"][0]
    answer = [t for t, label in zip(item["input_ids"], item["labels"], strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(answer) == " 42<|im_end|>"
    assert tokenizer.decode(item["input_ids"][: -len(answer)]) == qa(41)["prompt"]


def test_overlong_policies(tmp_path: Path, tokenizer: Any) -> None:
    row = {
        "prompt": "the start of a long prompt " + "and more words " * 30,
        "completion": " the answer " * 20,
    }
    (example,) = read_examples(write(tmp_path / "p.jsonl", [row]))
    prompt, answer = sft_parts(example, tokenizer)
    assert len(prompt) > 32 and len(answer) > 16
    encoded, stats = encode_splits(only(example), tokenizer, spec(tmp_path, max_length=32), "sft")
    item = encoded["train"][0]
    assert len(item["input_ids"]) == 32 and stats["train_truncated"] == 1
    assert item["input_ids"][:16] == prompt[-16:] and item["input_ids"][16:] == answer[:16]
    assert item["labels"][16:] == answer[:16]
    with pytest.raises(DataError, match="every train example is longer"):
        encode_splits(only(example), tokenizer, spec(tmp_path, max_length=32, overlong="drop"), "sft")
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'p.jsonl'))}:1: \d+ tokens"):
        encode_splits(only(example), tokenizer, spec(tmp_path, max_length=32, overlong="error"), "sft")


def test_uft_packing_fills_blocks_and_loses_no_token(tmp_path: Path, tokenizer: Any) -> None:
    rows = [{"text": f"Document {i} says " + "words " * (i * 7)} for i in range(12)]
    examples = read_examples(write(tmp_path / "t.jsonl", rows))
    splits = Splits(train=examples, validation=examples[:1], test=examples[:1])
    encoded, stats = encode_splits(splits, tokenizer, spec(tmp_path, max_length=16), "uft")
    blocks = encoded["train"]
    assert all(len(b["input_ids"]) == 16 for b in blocks[:-1]) and 0 < len(blocks[-1]["input_ids"]) <= 16
    docs = [[*tokenizer.encode(r["text"]), tokenizer.eos_token_id] for r in rows]
    assert [t for b in blocks for t in b["input_ids"]] == [t for d in docs for t in d]
    assert all(b["labels"] == b["input_ids"] for b in blocks)
    assert stats["train_tokens"] == stats["train_loss_tokens"] == sum(map(len, docs))
    assert pack([[1, 2, 3], [4, 5]], 2) == [{"input_ids": i, "labels": i} for i in ([1, 2], [3, 4], [5])]


def test_collate_pads_right_and_masks_padding() -> None:
    batch = collate(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
