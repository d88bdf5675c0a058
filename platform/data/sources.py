"""Where data rows come from: JSONL, CSV and Parquet files, and `datasets` folders saved to disk.

Each source yields `(row number, row object or None, problem or None)`, so the format checks in
`formats.py` see one shape whatever the file was. Row numbers are what a user finds in their own
file: the line for JSONL and CSV (a spreadsheet's row number: the header is line 1), the 1-based
row for Parquet and `datasets` folders.

A column mapping (`{"prompt": "question", "completion": "answer"}`: tuneloop's field -> the user's
column or key) renames before checking. JSONL lines are checked whole (an unknown key is a typo in
that line); a table's columns are declared once, so columns no format uses are ignored, and
`ignored` lists them. CSV cells are text, so a `messages` cell holds the conversation as JSON.

The readers are pyarrow's (Parquet and the Arrow IPC streams `Dataset.save_to_disk` writes) and the
standard library's (`json`, `csv`); every input is bounded: JSONL lines and CSV rows by
`max_row_bytes` (CSV headers by MAX_COLUMNS), tables by TABLE_SLICE rows of it at a time and Parquet
row groups by MAX_GROUP_BYTES, every source by MAX_ROWS and TUNELOOP_DATA_MAX_BYTES.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from tuneloop.platform import settings
from tuneloop.platform.errors import ConfigError
from tuneloop.platform.output import shortened
from tuneloop.platform.spec import RowField

Kind = Literal["jsonl", "csv", "parquet", "arrow"]
SUFFIXES: dict[str, Kind] = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
# Fields a row can carry in any format; a table's other columns are ignored.
FIELDS = frozenset({"messages", "prompt", "completion", "text"})
# A line this long is a broken export (a whole corpus on one line), not an example; the cap also
# keeps a bad file from being parsed into memory in one piece.
MAX_ROW_BYTES = 1 << 20
MAX_ROWS = 5_000_000
# A `datasets` folder's state.json and dataset_dict.json: their size, the files listed, names shown.
MAX_METADATA_BYTES = 1 << 20
MAX_DATA_FILES = 10_000
MAX_LISTED_NAMES = 10
MAX_SHOWN = 80  # characters of a user's value (a key, a role, a file name) an error shows
MAX_COLUMNS = 10_000  # of a CSV header: a row of a wider table is a dict of that many cells
# Tables are turned into Python objects this many rows at a time, and refused when those rows hold
# more than TABLE_SLICE * max_row_bytes; a Parquet row group is refused over MAX_GROUP_BYTES
# (uncompressed, as its footer says) before any of it is read.
TABLE_SLICE = 1024
MAX_GROUP_BYTES = 2 << 30
Row = tuple[int, dict[str, Any] | None, str | None]
# What json.loads raises past its own limits (RecursionError, or ValueError for an integer over
# 4,300 digits) is no JSONDecodeError and carries no position.
UNPARSABLE = "invalid JSON: nested too deeply or a number too long"


class SourceError(ConfigError):
    """A data source cannot be read at all (missing, unknown kind, unreadable table)."""


@dataclass
class Source:
    """One data file or folder, its kind, and the columns of a table that no format uses."""

    path: Path
    kind: Kind
    columns: Mapping[RowField, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    max_row_bytes: int = MAX_ROW_BYTES

    def rows(self) -> Iterator[Row]:
        readers = {"jsonl": self._jsonl, "csv": self._csv, "parquet": self._parquet, "arrow": self._arrow}
        for count, (number, obj, problem) in enumerate(readers[self.kind](), start=1):
            if count > MAX_ROWS:
                raise SourceError(f"{self.path} holds more than {MAX_ROWS} rows; split it into several files")
            yield number, (self._rename(obj) if obj is not None else None), problem

    def _rename(self, obj: dict[str, Any]) -> dict[str, Any]:
        for ours, theirs in self.columns.items():
            if theirs in obj and ours not in obj:
                obj[ours] = obj.pop(theirs)
        return obj

    def _table_columns(self, names: list[str]) -> list[str]:
        """The columns to read; the rest are recorded as ignored."""
        theirs = {v: k for k, v in self.columns.items()}
        keep = [n for n in names if theirs.get(n, n) in FIELDS]
        self.ignored = [n for n in names if n not in keep]
        return keep

    def _jsonl(self) -> Iterator[Row]:
        for number, raw in _raw_lines(self.path, self.max_row_bytes):
            if raw is None:
                too_long = f"line is longer than {self.max_row_bytes} bytes; split it into several examples"
                yield number, None, too_long
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, f"not valid UTF-8 (byte {exc.start})"
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
                    yield number, None, f"truncated JSON: the line ends inside a value ({exc.msg})"
                else:
                    yield number, None, f"invalid JSON: {exc.msg} at column {exc.pos + 1}"
                continue
            except (ValueError, RecursionError):  # json's own limits: nesting depth, 4,300-digit integers
                yield number, None, UNPARSABLE
                continue
            if not isinstance(obj, dict):
                yield number, None, f"expected a JSON object, got {kind_of(obj)}"
                continue
            yield number, obj, None

    def _csv(self) -> Iterator[Row]:
        csv.field_size_limit(self.max_row_bytes)
        # surrogateescape: a byte that is not UTF-8 reaches _CsvLines, which names its line.
        with self.path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            lines = _CsvLines(fh, self.path, self.max_row_bytes)
            reader = csv.DictReader(lines)
            names = list(reader.fieldnames or [])
            if len(names) > MAX_COLUMNS:
                raise SourceError(
                    f"{self.path}:1: the header has {len(names)} columns, more than {MAX_COLUMNS}"
                )
            keep = self._table_columns(names)
            while True:
                lines.record_bytes = 0
                try:
                    record = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield reader.line_num, None, f"not valid CSV: {exc}"
                    continue
                if None in record:
                    yield reader.line_num, None, "more cells than the header has columns"
                    continue
                if not any(record.values()):
                    continue  # a row of empty cells
                obj: dict[str, Any] = {k: record[k] for k in keep if record.get(k) is not None}
                problem = _messages_from_json(obj)
                yield reader.line_num, (None if problem else obj), problem

    def _parquet(self) -> Iterator[Row]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(self.path)
            self._check_parquet_size(table.metadata)
            keep = self._table_columns(table.schema_arrow.names)
            batches = table.iter_batches(batch_size=TABLE_SLICE, columns=keep)
            yield from self._table_rows(batches)
        except (OSError, pa.ArrowInvalid) as exc:  # a corrupt file: ArrowInvalid is a ValueError
            raise SourceError(f"{self.path} is not a readable Parquet file: {exc}") from None

    def _check_parquet_size(self, meta: Any) -> None:
        """Refuse from the footer alone what would cost too much to read: too many rows, or a row group
        declared larger than MAX_GROUP_BYTES (the declared size is a writer's word, and dictionary
        pages decode larger, so the slices in `_table_rows` are the bound that holds)."""
        if meta.num_rows > MAX_ROWS:
            raise SourceError(f"{self.path} holds {meta.num_rows} rows, more than {MAX_ROWS}; split it")
        for i in range(meta.num_row_groups):
            size = meta.row_group(i).total_byte_size
            if size > MAX_GROUP_BYTES:
                raise SourceError(
                    f"{self.path}: row group {i} holds {size} bytes uncompressed, more than "
                    f"{MAX_GROUP_BYTES}; write it with smaller row groups (pyarrow's row_group_size)"
                )

    def _arrow(self) -> Iterator[Row]:
        import pyarrow as pa

        files = saved_dataset_files(self.path)
        number = 0
        for file in files:
            try:
                with pa.ipc.open_stream(pa.memory_map(str(file))) as reader:
                    keep = self._table_columns(reader.schema.names)
                    for batch in reader:
                        for row in self._table_rows([batch.select(keep)], start=number):
                            number = row[0]
                            yield row
            except (OSError, pa.ArrowInvalid) as exc:
                raise SourceError(f"{file} is not a readable Arrow stream: {exc}") from None

    def _table_rows(self, batches: Any, start: int = 0) -> Iterator[Row]:
        """Rows of record batches, turned into Python objects TABLE_SLICE rows at a time (a batch of
        an Arrow stream can be any size; its bytes stay mapped until sliced)."""
        number = start
        limit = TABLE_SLICE * self.max_row_bytes
        for batch in batches:
            for offset in range(0, batch.num_rows, TABLE_SLICE):
                part = batch.slice(offset, TABLE_SLICE)
                if part.nbytes > limit:
                    raise SourceError(
                        f"{self.path}:{number + 1}: rows {number + 1}-{number + part.num_rows} hold "
                        f"{part.nbytes} bytes, more than {TABLE_SLICE} rows of {self.max_row_bytes} bytes"
                    )
                for record in part.to_pylist():
                    number += 1
                    # A struct column has every field in every row: a turn without `weight` reads back
                    # as weight None, so None means "not given" in tables.
                    obj = _without_nulls(record)
                    problem = _messages_from_json(obj)
                    yield number, (None if problem else obj), problem


def open_source(
    path: Path, columns: Mapping[RowField, str] | None = None, max_row_bytes: int = MAX_ROW_BYTES
) -> Source:
    """The source at `path`, its kind known by suffix (or a `datasets` folder); SourceError if unreadable."""
    if path.is_dir():
        # Refuses folders that are not a saved dataset, naming what to give.
        _check_size(path, sum(f.stat().st_size for f in saved_dataset_files(path)))
        return Source(path, "arrow", dict(columns or {}), max_row_bytes=max_row_bytes)
    if not path.is_file():
        raise SourceError(f"data file {path} does not exist")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(SUFFIXES))
        raise SourceError(f"{path}: unknown data file type {path.suffix!r}; use {known} or a saved dataset")
    _check_size(path, path.stat().st_size)
    return Source(path, kind, dict(columns or {}), max_row_bytes=max_row_bytes)


def _check_size(path: Path, size: int) -> None:
    limit = settings.TUNELOOP_DATA_MAX_BYTES.get()
    if size > limit:
        raise SourceError(
            f"{path} is {size} bytes, more than TUNELOOP_DATA_MAX_BYTES ({limit}); "
            "split it or raise the limit"
        )


def saved_dataset_files(folder: Path) -> list[Path]:
    """The Arrow files of a folder `Dataset.save_to_disk` wrote, in order (its state.json lists them)."""
    if (folder / "dataset_dict.json").is_file():
        found = _metadata(folder / "dataset_dict.json")
        splits = found.get("splits") if isinstance(found, dict) else None
        shown = splits[:MAX_LISTED_NAMES] if isinstance(splits, list) else []
        names = ", ".join(cut(str(s)) for s in shown) or "none listed"
        raise SourceError(
            f"{folder} is a DatasetDict (splits: {names}); name one split's folder, e.g. {folder}/train"
        )
    state = folder / "state.json"
    if not state.is_file():
        raise SourceError(f"{folder} is a folder but not a `datasets` folder saved to disk (no state.json)")
    found = _metadata(state)
    entries = found.get("_data_files") if isinstance(found, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("filename"), str) for e in entries
    ):
        raise SourceError(f"{state} does not list the dataset's files (_data_files)")
    if len(entries) > MAX_DATA_FILES:
        raise SourceError(f"{state} lists {len(entries)} files, more than {MAX_DATA_FILES}")
    root = folder.resolve()
    files = []
    for entry in entries:
        name = entry["filename"]
        # A name, never a path: state.json is data, and must not point the reader outside its folder.
        if Path(name).name != name or not (folder / name).resolve().is_relative_to(root):
            raise SourceError(f"{state} lists {cut(repr(name))}, which is not a file name in {folder}")
        files.append(folder / name)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        more = f" and {len(missing) - MAX_LISTED_NAMES} more" if len(missing) > MAX_LISTED_NAMES else ""
        shown_missing = ", ".join(cut(n) for n in missing[:MAX_LISTED_NAMES])
        raise SourceError(f"{folder} lacks {shown_missing}{more}, which its state.json lists")
    return files


def _metadata(path: Path) -> object:
    """A `datasets` metadata file's JSON (None if it is not JSON), refused past MAX_METADATA_BYTES."""
    size = path.stat().st_size
    if size > MAX_METADATA_BYTES:
        raise SourceError(
            f"{path} is {size} bytes, more than {MAX_METADATA_BYTES}: not what `datasets` writes"
        )
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def cut(text: str) -> str:
    """A user's value as a message shows it: at most MAX_SHOWN characters."""
    return shortened(text, MAX_SHOWN)


def kind_of(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _messages_from_json(obj: dict[str, Any]) -> str | None:
    """A CSV cell holds a conversation as JSON text; parse it in place. The problem, if any."""
    value = obj.get("messages")
    if not isinstance(value, str):
        return None
    try:
        obj["messages"] = json.loads(value)
    except json.JSONDecodeError as exc:
        return f"the messages cell is not a JSON list of turns: {exc.msg} at column {exc.pos + 1}"
    except (ValueError, RecursionError):
        return f"the messages cell is not a JSON list of turns: {UNPARSABLE}"
    return None


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


class _CsvLines:
    """The lines csv reads, each row's bounded: `field_size_limit` caps a cell, not the cells of a line
    nor the lines a quoted cell spans, so the bytes of one row (reset by the reader) are capped here."""

    def __init__(self, fh: IO[str], path: Path, max_bytes: int) -> None:
        self.fh, self.path, self.max_bytes = fh, path, max_bytes
        self.lineno = 0
        self.record_bytes = 0

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        line = self.fh.readline(self.max_bytes + 1)  # characters: at most 4 bytes each
        if not line:
            raise StopIteration
        self.lineno += 1
        try:
            size = len(line.encode("utf-8"))
        except UnicodeEncodeError as exc:  # an escaped byte that was not UTF-8
            byte = len(line[: exc.start].encode("utf-8", "surrogateescape")) + 1
            raise SourceError(
                f"{self.path}:{self.lineno}: not UTF-8 text (byte {byte} of the line); save it as UTF-8"
            ) from None
        self.record_bytes += size
        if self.record_bytes > self.max_bytes:
            raise SourceError(
                f"{self.path}:{self.lineno}: line longer than {self.max_bytes} bytes (a row, with any "
                "line breaks inside quotes, must fit in it); split it or check its quotes"
            )
        return line


def _raw_lines(path: Path, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) per line; None for a line over max_bytes, which is skipped unread."""
    with path.open("rb") as fh:
        lineno = 0
        while chunk := fh.readline(max_bytes + 1):
            lineno += 1
            if len(chunk) > max_bytes and not chunk.endswith(b"\n"):
                while chunk and not chunk.endswith(b"\n"):
                    chunk = fh.readline(1 << 16)
                yield lineno, None
            else:
                yield lineno, chunk.removeprefix(b"\xef\xbb\xbf") if lineno == 1 else chunk
