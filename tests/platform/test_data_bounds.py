"""Every data input is bounded before work is spent on it: a hostile or broken file gets one clear error
naming the file and its row, never a traceback, whatever the reader (JSONL, CSV, Parquet, Arrow)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tuneloop.platform.data import DataError, read_examples
from tuneloop.platform.data.formats import MAX_LISTED, scan

UNPARSABLE = "invalid JSON: nested too deeply or a number too long"
GOOD = {"prompt": "What is one?", "completion": "1"}


def errors_of(path: Path) -> list[tuple[str, str]]:
    """(row, reason) of every row a DataError names."""
    with pytest.raises(DataError) as exc:
        read_examples(path)
    return re.findall(rf"{re.escape(str(path))}:(\d+): (.*)", str(exc.value))


def test_json_past_the_parsers_limits_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    deep = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path.write_text("\n".join([json.dumps(GOOD), deep, '{"prompt": ' + "9" * 5000 + "}"]) + "\n")
    assert errors_of(path) == [("2", UNPARSABLE), ("3", UNPARSABLE)]
    cell = "[" * 100_000
    table = tmp_path / "deep.csv"
    table.write_text(f"messages\n{cell}\n")
    assert errors_of(table) == [("2", f"the messages cell is not a JSON list of turns: {UNPARSABLE}")]


def test_a_row_keeps_ten_reasons_and_shows_user_values_cut(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    turns = ",".join(["{}"] * 300_000)  # each empty turn lacks a role and a content: 600,000 reasons
    long_key = "k" * 100_000
    long_role = {"messages": [{"role": "r" * 100_000, "content": "x"}, {"role": "assistant", "content": "y"}]}
    lines = [f'{{"messages": [{turns}]}}', json.dumps({**GOOD, long_key: 1}), json.dumps(long_role)]
    path.write_text("\n".join(lines) + "\n")
    found = scan(path)
    first = found.problems[1]
    assert len(first) == 11 and first[:2] == [
        "messages[0] is missing 'role'",
        "messages[0] is missing 'content'",
    ]
    assert first[-1] == "and 599992 more"  # the two final checks (last turn, a user turn) count too
    key = found.problems[2][0]
    assert key.startswith("unknown key 'kkk") and key.endswith("kkk... in a prompt_completion line")
    assert len(key) < 150
    assert all(len(reason) < 150 for reason in found.problems[3])
    with pytest.raises(DataError) as exc:
        read_examples(path)
    assert len(str(exc.value)) < 4000


def test_only_the_listed_rows_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": ""}\n' * 120)
    with pytest.raises(DataError) as exc:
        read_examples(path)
    lines = str(exc.value).splitlines()
    assert lines[0].endswith("120 bad line(s); fix them and resubmit (no training was started):")
    assert len(lines) == 1 + MAX_LISTED + 1 and lines[-1] == f"  ... and {120 - MAX_LISTED} more"
    assert lines[1] == f"  {path}:1: missing key 'completion'; 'prompt' is empty"


def test_a_corrupt_parquet_file_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 64)
    with pytest.raises(DataError, match=r"broken\.parquet is not a readable Parquet file: .*magic bytes"):
        read_examples(path)


def test_tables_are_bounded_before_they_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tuneloop.platform.data import sources

    path = tmp_path / "qa.parquet"
    wide = [{**GOOD, "completion": f"{i:05d}" * 60} for i in range(2048)]  # distinct: no dictionary
    pq.write_table(pa.Table.from_pylist(wide), path, row_group_size=1024)
    assert len(read_examples(path)) == 2048
    with pytest.raises(
        DataError, match=r"qa\.parquet:1: rows 1-1024 hold \d+ bytes, more than 1024 rows of 200"
    ):
        read_examples(path, max_line_bytes=200)
    monkeypatch.setattr(sources, "MAX_GROUP_BYTES", 100_000)
    with pytest.raises(
        DataError, match=r"qa\.parquet: row group 0 holds \d+ bytes uncompressed, more than 100000"
    ):
        read_examples(path)
    monkeypatch.setattr(sources, "MAX_ROWS", 100)
    with pytest.raises(DataError, match=r"qa\.parquet holds 2048 rows, more than 100; split it"):
        read_examples(path)


def test_an_arrow_stream_is_read_a_slice_at_a_time(tmp_path: Path) -> None:
    import pyarrow as pa

    folder = tmp_path / "saved"
    folder.mkdir()
    table = pa.Table.from_pylist([{**GOOD, "completion": "x" * 300} for _ in range(3000)])
    with pa.ipc.new_stream(folder / "data-00000-of-00001.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=3000)  # one batch of every row
    (folder / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})
    )
    assert len(read_examples(folder)) == 3000
    with pytest.raises(DataError, match=r"saved:1: rows 1-1024 hold \d+ bytes, more than 1024 rows of 200"):
        read_examples(folder, max_line_bytes=200)


def test_a_source_over_the_size_limit_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + "\n" * 100)
    assert len(read_examples(path)) == 1
    monkeypatch.setenv("TUNELOOP_DATA_MAX_BYTES", "100")
    with pytest.raises(
        DataError, match=r"big\.jsonl is 146 bytes, more than TUNELOOP_DATA_MAX_BYTES \(100\)"
    ):
        read_examples(path)
    folder = Path(__file__).resolve().parent.parent / "assets" / "saved_dataset"
    with pytest.raises(DataError, match=r"saved_dataset is \d+ bytes, more than TUNELOOP_DATA_MAX_BYTES"):
        read_examples(folder)


def test_a_csv_row_is_bounded_in_bytes_whatever_its_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.platform.data import sources

    path = tmp_path / "qa.csv"
    head = "prompt,completion\nWhat is one?,1\n"
    path.write_text(head + "," * 2000 + "\n")  # every cell is empty: the cell limit never sees it
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: line longer than 1000 bytes"):
        read_examples(path, max_line_bytes=1000)
    path.write_text(head + '"' + "a quoted cell\n" * 100 + '",x\n')  # one row over 100 lines
    assert len(read_examples(path)) == 2  # read whole with the default limit
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:74: line longer than 1000 bytes"):
        read_examples(path, max_line_bytes=1000)
    path.write_bytes(head.encode() + b"caf\xe9?,yes\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: not UTF-8 text \(byte 4 of the line\)"):
        read_examples(path)
    monkeypatch.setattr(sources, "MAX_COLUMNS", 10)
    path.write_text(",".join(f"c{i}" for i in range(11)) + "\n")
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}:1: the header has 11 columns, more than 10"
    ):
        read_examples(path)


def test_a_saved_datasets_metadata_cannot_point_outside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa

    from tuneloop.platform.data import sources

    table = pa.Table.from_pylist([GOOD])
    with pa.ipc.new_stream(tmp_path / "outside.arrow", table.schema) as writer:
        writer.write_table(table)
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "linked.arrow").symlink_to(tmp_path / "outside.arrow")
    state = folder / "state.json"
    for name in ("../outside.arrow", str(tmp_path / "outside.arrow"), "linked.arrow", ".."):
        state.write_text(json.dumps({"_data_files": [{"filename": name}]}))
        with pytest.raises(DataError, match=r"state\.json lists '.*', which is not a file name in"):
            read_examples(folder)
    monkeypatch.setattr(sources, "MAX_DATA_FILES", 3)
    state.write_text(json.dumps({"_data_files": [{"filename": f"d{i}.arrow"} for i in range(4)]}))
    with pytest.raises(DataError, match=r"state\.json lists 4 files, more than 3$"):
        read_examples(folder)
    state.write_text(json.dumps({"_data_files": [], "pad": "x" * (1 << 20)}))
    with pytest.raises(DataError, match=r"state\.json is \d+ bytes, more than 1048576"):
        read_examples(folder)
    state.write_text(json.dumps({"_data_files": [{"filename": 7}]}))
    with pytest.raises(DataError, match=r"state\.json does not list the dataset's files"):
        read_examples(folder)
    (folder / "dataset_dict.json").write_text('["train"]')
    with pytest.raises(DataError, match=r"saved is a DatasetDict \(splits: none listed\)"):
        read_examples(folder)
