"""`tuneloop data check FILE...`: what a dataset holds and what training would make of it, before any
compute is spent.

Per file: its kind, rows read, rows per format, every bad row with its reasons (all of them, as
training would refuse them), table columns no format uses, and exact duplicates dropped. Then the
split a job would make (the same `make_splits`, so the same seed gives the same sizes and data hash),
and with a base model, the token lengths the job's tokenisation gives (the same code: every
assistant turn, the chat template) against `max_length`, and what `overlong` would do with the long
ones. Files are taken as a job spec's data names them: train, then validation and test; a job spec
(`.yaml`) may be given instead, and its data, task and base model are used.
"""

from __future__ import annotations

import json as _json
import statistics
from pathlib import Path
from typing import Any, Literal

from tuneloop.platform.data.formats import DataError, Example, scan
from tuneloop.platform.data.splits import SPLITS, dedupe, make_splits
from tuneloop.platform.errors import ConfigError
from tuneloop.platform.hub import hub_dataset_file
from tuneloop.platform.spec import DataSpec, Task, load_spec

SHOWN = 20  # bad rows listed per file in the human report (the JSON report lists up to MAX_LISTED)
MAX_LISTED = 1000


def data_check(
    files: list[Path],
    base_model: str | None = None,
    task: Literal["sft", "uft"] = "sft",
    max_length: int = 512,
    column: list[str] | None = None,
    json: bool = False,
) -> int:
    """Validate data files without training: rows per format, bad rows and why, duplicates, the split a
    job would make, and token lengths against max_length with the base model's tokenizer.

    Args:
        files: JSONL, CSV, Parquet, datasets folders or hf://datasets/... (train, validation, test), or a spec
        base_model: model folder, pulled name or Hugging Face id whose tokenizer counts (default: the spec's)
        task: sft or uft (a spec's by default)
        max_length: token limit to compare lengths with (a spec's data.max_length by default)
        column: column mapping FIELD=COLUMN ..., e.g. --column prompt=question completion=answer
        json: print one JSON object instead of text
    """
    if len(files) == 1 and files[0].suffix in (".yaml", ".yml"):
        spec = load_spec(files[0])
        data, task, base_model = spec.data, spec.task, base_model or spec.base_model
    else:
        if not 1 <= len(files) <= len(SPLITS):
            raise ConfigError("give 1 to 3 data files (train, validation, test) or one job spec")
        local = [hub_dataset_file(str(f)) or f for f in files]  # hf://datasets/... from the HF cache
        data = _data_spec(local, column or [], max_length)
    report = check(data, task, base_model)
    print(_json.dumps(report, indent=2) if json else "\n".join(_lines(report)))
    return 0 if report["ok"] else 1


def check(data: DataSpec, task: Task, base_model: str | None) -> dict[str, Any]:
    """The whole report as a JSON-ready dict; `ok` is whether a job would accept the data."""
    files = []
    for name, path in zip(SPLITS, (data.train, data.validation, data.test), strict=True):
        if path is not None:
            files.append({"split": name, **_file_report(path, data)})
    report: dict[str, Any] = {"files": files, "task": task, "max_length": data.max_length}
    report["ok"] = all(not f["bad_rows"] for f in files)
    if not report["ok"]:
        return report
    try:
        splits = make_splits(data, task)
    except DataError as exc:
        report["ok"], report["error"] = False, str(exc)
        return report
    report["split"] = {
        k: v for k, v in splits.stats.items() if k in (*SPLITS, "duplicates_removed", "data_hash")
    }
    if base_model:
        try:
            report["tokens"] = _token_report(
                [*splits.train, *splits.validation, *splits.test], data, task, base_model
            )
        except (DataError, ConfigError) as exc:
            report["ok"], report["error"] = False, str(exc)
    return report


def _data_spec(files: list[Path], columns: list[str], max_length: int) -> DataSpec:
    mapping: dict[str, str] = {}
    for entry in columns:
        ours, sep, theirs = entry.partition("=")
        if not sep or not theirs:
            raise ConfigError(f"--column {entry!r} must be FIELD=COLUMN, e.g. prompt=question")
        mapping[ours] = theirs
    given = dict(zip(SPLITS, files, strict=False))
    try:
        return DataSpec.model_validate(
            {**given, "columns": mapping, "max_length": max_length, "min_examples": 1}
        )
    except ValueError as exc:
        raise ConfigError(f"bad option: {exc}".splitlines()[0] + " " + str(exc).splitlines()[-1]) from None


def _file_report(path: Path, data: DataSpec) -> dict[str, Any]:
    found = scan(path, columns=data.columns)
    _, duplicates = dedupe(found.examples)
    formats: dict[str, int] = {}
    for example in found.examples:
        formats[example.format] = formats.get(example.format, 0) + 1
    return {
        "path": str(path),
        "kind": found.kind,
        "rows": found.rows,
        "examples": len(found.examples),
        "formats": formats,
        "bad_rows": len(found.problems),
        "problems": [{"row": n, "reasons": r} for n, r in sorted(found.problems.items())[:MAX_LISTED]],
        "ignored_columns": found.ignored_columns,
        "duplicates": len(duplicates),
        "duplicate_rows": [ex.line for ex in duplicates[:MAX_LISTED]],
    }


def _token_report(examples: list[Example], data: DataSpec, task: Task, base_model: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from tuneloop.platform.basemodels import resolve_model
    from tuneloop.train.tokenize import IGNORE_INDEX, sft_labelled, uft_ids

    folder = resolve_model(base_model)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    lengths: list[int] = []
    loss = 0
    for example in examples:
        if task == "sft":
            ids, labels, _ = sft_labelled(example, tokenizer)
            loss += sum(label != IGNORE_INDEX for label in labels)
        else:
            ids = uft_ids(example, tokenizer)
            loss += len(ids)
        lengths.append(len(ids))
    ordered = sorted(lengths)
    over = sum(n > data.max_length for n in lengths)
    return {
        "tokenizer": base_model,
        "examples": len(lengths),
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 1),
        "p50": _quantile(ordered, 0.5),
        "p90": _quantile(ordered, 0.9),
        "p99": _quantile(ordered, 0.99),
        "max": ordered[-1],
        "over_max_length": over,
        "overlong_policy": data.overlong,
        "loss_tokens": loss,
    }


def _quantile(ordered: list[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _lines(report: dict[str, Any]) -> list[str]:
    out = []
    for f in report["files"]:
        formats = ", ".join(f"{n} {fmt}" for fmt, n in f["formats"].items()) or "none"
        out.append(
            f"{f['split']}: {f['path']} ({f['kind']}): {f['rows']} rows, {f['examples']} valid ({formats})"
        )
        if f["ignored_columns"]:
            out.append(f"  columns ignored (no format uses them): {', '.join(f['ignored_columns'])}")
        if f["duplicates"]:
            shown = ", ".join(str(n) for n in f["duplicate_rows"][:SHOWN])
            out.append(f"  {f['duplicates']} exact duplicate(s) dropped: rows {shown}")
        if f["bad_rows"]:
            out.append(f"  {f['bad_rows']} bad row(s), each refused by training:")
            out += [f"    {f['path']}:{p['row']}: {'; '.join(p['reasons'])}" for p in f["problems"][:SHOWN]]
            if f["bad_rows"] > SHOWN:
                out.append(f"    ... and {f['bad_rows'] - SHOWN} more (--json lists them)")
    if "split" in report:
        s = report["split"]
        out.append(
            f"split: train {s['train']}, validation {s['validation']}, test {s['test']} "
            f"({s['duplicates_removed']} duplicate(s) removed; data hash {s['data_hash'][:12]})"
        )
    if "tokens" in report:
        t = report["tokens"]
        out.append(
            f"tokens ({t['tokenizer']}, {report['task']}): min {t['min']}, median {t['p50']}, "
            f"p90 {t['p90']}, p99 {t['p99']}, max {t['max']}; {t['loss_tokens']} carry loss"
        )
        if t["over_max_length"]:
            what = {"truncate": "truncated", "drop": "dropped", "error": "refused (overlong: error)"}
            out.append(
                f"  {t['over_max_length']} example(s) over max_length {report['max_length']} would be "
                f"{what[t['overlong_policy']]}"
            )
        else:
            out.append(f"  every example fits max_length {report['max_length']}")
    if "error" in report:
        out.append(f"error: {report['error']}")
    out.append("ok: a job would accept this data" if report["ok"] else "not ok: a job would refuse this data")
    return out
