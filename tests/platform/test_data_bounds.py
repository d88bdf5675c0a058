"""Every data input is bounded before work is spent on it: a hostile or broken file gets one clear error
naming the file and its row, never a traceback, whatever the reader (JSONL, CSV, Parquet, Arrow)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tuneloop.platform.data import DataError, read_examples

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
