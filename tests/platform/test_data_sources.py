"""Data in the formats people have: JSONL, CSV, Parquet, `datasets` folders, with a column mapping; every
problem names its row in the user's own file; `tuneloop data check` reports before any compute."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tuneloop.platform.cli import main
from tuneloop.platform.data import DataError, make_splits, read_examples
from tuneloop.platform.ray import submit as jobs
from tuneloop.platform.spec import DataSpec

ASSETS = Path(__file__).resolve().parent.parent / "assets"
QA = {"prompt": "question", "completion": "answer"}


def qa_rows(n: int) -> list[dict[str, str]]:
    return [
        {"question": f"What is {i} plus one?", "answer": f" {i + 1}", "source": "arith"} for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_csv_rows_are_named_by_their_line_and_mapped_by_column(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text(
        'id,question,answer\n1,What is one?,1\n2,"Two\nlines?",2\n3,Empty answer,\n4,What is one?,1\n'
    )
    with pytest.raises(DataError) as exc:
        read_examples(path, columns=QA)
    assert re.findall(rf"{re.escape(str(path))}:(\d+): (.*)", str(exc.value)) == [
        ("5", "'completion' is empty")
    ]
    path.write_text(path.read_text().replace("Empty answer,", "Empty answer,none"))
    examples = read_examples(path, columns=QA)
    assert [(ex.line, ex.prompt, ex.completion) for ex in examples][:2] == [
        (2, "What is one?", "1"),
        (4, "Two\nlines?", "2"),  # a quoted cell over two lines: the row ends on line 4
    ]


def test_a_csv_messages_cell_holds_the_conversation_as_json(tmp_path: Path) -> None:
    turns = [{"role": "user", "content": "hi, there"}, {"role": "assistant", "content": "hello", "weight": 1}]
    path = tmp_path / "chat.csv"
    path.write_text('messages\n"' + json.dumps(turns).replace('"', '""') + '"\n"[{broken"\n')
    with pytest.raises(DataError, match=r"chat\.csv:3: the messages cell is not a JSON list of turns"):
        read_examples(path)


def test_parquet_chat_with_optional_turn_fields(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(4)
    ]
    rows[1]["messages"][1]["weight"] = 0
    rows[1]["messages"].append({"role": "assistant", "content": "more", "weight": 1})
    rows[2]["messages"][1]["content"] = ""
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"chat\.parquet:3: 'messages\[1\]\.content' is empty"):
        read_examples(path)
    rows.pop(2)
    pq.write_table(pa.Table.from_pylist(rows), path)
    examples = read_examples(path)
    # A struct column has every field in every row; a weight that was never given stays unset.
    assert [[m.weight for m in ex.messages] for ex in examples] == [[None, None], [None, 0, 1], [None, None]]
    assert [ex.line for ex in examples] == [1, 2, 3]


def test_a_saved_dataset_folder_is_read_with_its_row_numbers(tmp_path: Path) -> None:
    folder = ASSETS / "saved_dataset"
    with pytest.raises(DataError) as exc:
        read_examples(folder, columns=QA)
    assert f"{folder}:5: 'completion' is empty" in str(exc.value)
    with pytest.raises(DataError, match=r"is a DatasetDict \(splits: train, test\); name one split's folder"):
        read_examples(ASSETS / "saved_chat_dict")
    chats = read_examples(ASSETS / "saved_chat_dict" / "train")
    assert len(chats) == 8 and [m.weight for m in chats[2].messages] == [None, 0, None, None]
    with pytest.raises(DataError, match="not a `datasets` folder saved to disk"):
        read_examples(tmp_path)
    with pytest.raises(DataError, match=r"unknown data file type '\.txt'"):
        read_examples(write_jsonl(tmp_path / "x.txt", []))


def test_the_same_rows_give_the_same_split_whatever_the_file(tmp_path: Path) -> None:
    rows = qa_rows(20)
    write_jsonl(tmp_path / "qa.jsonl", [{"prompt": r["question"], "completion": r["answer"]} for r in rows])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa.parquet")
    with (tmp_path / "qa.csv").open("w") as fh:
        fh.write("question,answer,source\n" + "".join(f"{r['question']},{r['answer']},x\n" for r in rows))
    hashes = set()
    for name, columns in (("qa.jsonl", {}), ("qa.parquet", QA), ("qa.csv", QA)):
        spec = DataSpec(train=tmp_path / name, columns=columns, min_examples=1)
        hashes.add(make_splits(spec, "sft").stats["data_hash"])
    assert len(hashes) == 1


def test_staged_paths_map_back_to_the_files_as_the_user_wrote_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    shutil.copytree(ASSETS / "saved_dataset", tmp_path / "data" / "qa_ds")
    write_jsonl(tmp_path / "data" / "test.jsonl", [{"prompt": "p", "completion": "c"}])
    spec = {
        "base_model": "x",
        "method": {"name": "lora"},
        "data": {"train": "data/qa_ds", "test": "data/test.jsonl", "columns": QA},
        "output": {"adapter": "a"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    sources = jobs.staged_sources(Path("job.yaml"))
    assert sources == {"data/train/qa_ds": "data/qa_ds", "data/test/test.jsonl": "data/test.jsonl"}
    ray = "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_0a1b"
    error = f"DataError: {ray}/data/test/test.jsonl:1 repeats {ray}/data/train/qa_ds:20"
    assert jobs.unstage(error, sources) == "DataError: data/test.jsonl:1 repeats data/qa_ds:20"
    with jobs.staged_working_dir(Path("job.yaml")) as (root, name):
        staged = yaml.safe_load((root / name).read_text())["data"]
        assert staged["train"] == "data/train/qa_ds" and (root / staged["train"] / "state.json").is_file()
        assert staged["columns"] == QA


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["data", "check", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_data_check_reports_rows_problems_duplicates_and_the_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = qa_rows(20)
    rows[7] = rows[3]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa.parquet")
    code, report = check(
        capsys, str(tmp_path / "qa.parquet"), "--column", "prompt=question", "completion=answer"
    )
    (file,) = report["files"]
    assert code == 0 and report["ok"]
    assert (file["kind"], file["rows"], file["examples"], file["formats"]) == (
        "parquet",
        20,
        20,
        {"prompt_completion": 20},
    )
    assert file["ignored_columns"] == ["source"] and file["duplicate_rows"] == [8]
    assert report["split"] | {"data_hash": ""} == {
        "train": 15,
        "validation": 2,
        "test": 2,
        "duplicates_removed": 1,
        "data_hash": "",
    }
    code, report = check(
        capsys, str(ASSETS / "saved_dataset"), "--column", "prompt=question", "completion=answer"
    )
    assert code == 1 and not report["ok"] and "split" not in report
    assert report["files"][0]["problems"] == [{"row": 5, "reasons": ["'completion' is empty"]}]


def test_data_check_counts_tokens_with_the_base_models_tokenizer(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = ASSETS / "saved_chat_dict" / "train"
    code, report = check(capsys, str(chat), "--base-model", str(tiny_model_dir), "--max-length", "24")
    tokens = report["tokens"]
    assert code == 0 and tokens["examples"] == 8
    assert tokens["min"] <= tokens["p50"] <= tokens["p90"] <= tokens["max"]
    assert tokens["over_max_length"] == 8 and tokens["overlong_policy"] == "truncate"
    code, report = check(capsys, str(chat), "--base-model", str(tiny_model_dir))
    assert report["tokens"]["over_max_length"] == 0
    # Every assistant turn carries loss except the one with weight 0 (two per chat, one fewer in row 3).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    answers = [f"answer {i}<|im_end|>" for i in range(8) if i != 2] + ["welcome<|im_end|>"] * 8
    assert report["tokens"]["loss_tokens"] == sum(
        len(tokenizer.encode(a, add_special_tokens=False)) for a in answers
    )
    human = main(["data", "check", str(chat), "--base-model", str(tiny_model_dir), "--max-length", "24"])
    out = capsys.readouterr().out
    assert human == 0 and "8 example(s) over max_length 24 would be truncated" in out


def test_data_check_bad_options_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}])
    assert main(["data", "check", str(path), "--column", "prompt"]) == 1
    assert capsys.readouterr().err.strip() == (
        "tuneloop: error: --column 'prompt' must be FIELD=COLUMN, e.g. prompt=question"
    )
    assert main(["data", "check", str(tmp_path / "missing.jsonl")]) == 1
    assert "does not exist" in capsys.readouterr().err
