"""Train/validation/test splits: deterministic, duplicate-free, leakage-checked, and hashed.

Exact duplicates (same format and content, see `Example.key`) are removed before splitting, so no
example can sit in both train and test. Where a split is carved from the train file, each example's
place comes from SHA-256(seed, content): the same data and seed give the same split on every machine
and run (no Python `hash()`, whose randomisation would change it), whatever the line order.
Where the user gives validation or test files, duplicates across the given files are refused instead,
with the line numbers, because silently dropping them would change the user's own held-out set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from tuneloop.platform.data.formats import DataError, Example, read_examples, report
from tuneloop.platform.spec import DataSpec, Task

SPLITS = ("train", "validation", "test")
# Written into manifests beside the hash, so a reader knows what two equal hashes promise.
HASH_SCHEME = (
    "tuneloop-data-v1: SHA-256 over the canonical JSON content (format + messages/prompt/completion/"
    "text; not paths, line numbers or line order) of the examples of train, validation and test, "
    "each split sorted, with split names and sizes; tokenizer and max_length are not covered"
)


@dataclass
class Splits:
    """The three splits and what happened on the way (counts, duplicates removed, where splits came from)."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    stats: dict[str, int | str] = field(default_factory=dict)

    def by_name(self) -> dict[str, list[Example]]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def make_splits(data: DataSpec, task: Task) -> Splits:
    """Read the data files of a job, validate them for `task`, and return the splits with stats and hash."""
    given = {"train": data.train, "validation": data.validation, "test": data.test}
    stats: dict[str, int | str] = {}
    read: dict[str, list[Example]] = {}
    duplicates: list[Example] = []
    for name, path in given.items():
        if path is None:
            continue
        least = data.min_examples if name == "train" else 1
        examples = read_examples(path, task=task, min_examples=least, columns=data.columns)
        read[name], dropped = dedupe(examples)
        duplicates += dropped
        stats[f"{name}_lines_read"] = len(examples)
        stats[f"{name}_source"] = str(path)
    _check_same_format(read)
    check_no_overlap(read)
    stats["duplicates_removed"] = len(duplicates)
    if duplicates:
        shown = ", ".join(f"{ex.source}:{ex.line}" for ex in duplicates[:10])
        stats["duplicate_lines"] = shown + (", ..." if len(duplicates) > 10 else "")
    # A given file's fraction goes to train: fractions only say how much of the train file to carve.
    carve = {name: frac for name, frac in zip(SPLITS[1:], data.split[1:], strict=True) if name not in read}
    pool = read["train"]
    carved = split_examples(pool, carve, seed=data.seed)
    splits = Splits(
        train=carved["train"],
        validation=read.get("validation", carved.get("validation", [])),
        test=read.get("test", carved.get("test", [])),
        stats=stats,
    )
    for name, examples in splits.by_name().items():
        stats[name] = len(examples)
    if len(splits.train) < data.min_examples:
        raise DataError(
            f"the train split has {len(splits.train)} examples after carving validation/test from "
            f"{len(pool)} unique ones; at least {data.min_examples} are needed (data.min_examples)"
        )
    stats["data_hash"] = data_hash(splits)
    stats["data_hash_scheme"] = HASH_SCHEME
    return splits


def dedupe(examples: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """(first occurrence of each distinct example in file order, the later exact duplicates)."""
    seen: set[str] = set()
    kept: list[Example] = []
    dropped: list[Example] = []
    for example in examples:
        key = example.key()
        (dropped if key in seen else kept).append(example)
        seen.add(key)
    return kept, dropped


def split_examples(
    examples: Sequence[Example], fractions: dict[str, float], *, seed: int
) -> dict[str, list[Example]]:
    """Carve the named splits (`{"validation": 0.1, ...}`) off duplicate-free examples; the rest is train.

    Sizes are fractions of all examples, rounded half up; a carved split that would be empty is refused,
    since early stopping and the promotion gate both need held-out data.
    """
    ordered = sorted(examples, key=lambda ex: _seeded_digest(seed, ex.key()))
    out: dict[str, list[Example]] = {}
    start = 0
    for name, fraction in fractions.items():
        size = int(len(ordered) * fraction + 0.5)
        if size < 1:
            raise DataError(
                f"the {name} split would be empty: {len(ordered)} unique examples x {fraction} rounds to 0; "
                f"add examples, raise its fraction in data.split, or give a data.{name} file"
            )
        out[name] = ordered[start : start + size]
        start += size
    out["train"] = ordered[start:]
    return out


def check_no_overlap(named: dict[str, list[Example]]) -> None:
    """Refuse exact duplicates across given splits, naming both lines of each pair."""
    first: dict[str, Example] = {}
    clashes: list[str] = []
    for examples in named.values():
        for example in examples:
            other = first.setdefault(example.key(), example)
            if other is not example:
                clashes.append(f"{example.source}:{example.line} repeats {other.source}:{other.line}")
    if clashes:
        head = f"{len(clashes)} example(s) appear in more than one split, which would leak held-out data:"
        raise DataError(report(head, clashes))


def data_hash(splits: Splits) -> str:
    """Hex SHA-256 of the splits' content as HASH_SCHEME describes; stable across runs and machines."""
    digest = hashlib.sha256(HASH_SCHEME.encode())
    for name, examples in splits.by_name().items():
        digest.update(f"\n{name} {len(examples)}\n".encode())
        # Keys are JSON, whose strings escape newlines, so one key per line is unambiguous.
        for key in sorted(ex.key() for ex in examples):
            digest.update(key.encode() + b"\n")
    return digest.hexdigest()


def _seeded_digest(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\n{key}".encode()).hexdigest()


def _check_same_format(named: dict[str, list[Example]]) -> None:
    formats = {name: examples[0].format for name, examples in named.items()}
    if len(set(formats.values())) > 1:
        found = ", ".join(f"{name} is {fmt}" for name, fmt in formats.items())
        raise DataError(f"all data files must share one format, since the model is served one way: {found}")
