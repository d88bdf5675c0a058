"""Training data: rows in one of three formats, every row validated before any compute.

The formats are the ones users already have: OpenAI chat (`{"messages": [...]}` ending with an
assistant turn; every assistant turn is trained unless its `weight` is 0), prompt/completion
(`{"prompt", "completion"}`) and raw text (`{"text"}`). The rows come from JSONL, CSV, Parquet or a
`datasets` folder saved to disk (platform/data/sources.py), optionally through a column mapping. A
file holds one format. Reading never stops at the first problem: every bad row is collected and one
`DataError` lists them all as `path:row: reason`, so a user fixes a file in one round trip rather
than twenty.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneloop.platform.data.sources import (
    MAX_ROW_BYTES,
    MAX_SHOWN,
    Kind,
    SourceError,
    cut,
    kind_of,
    open_source,
)
from tuneloop.platform.errors import ConfigError
from tuneloop.platform.spec import RowField, Task

Format = Literal["chat", "prompt_completion", "text"]
ROLES = ("system", "user", "assistant")
KEYS: dict[Format, frozenset[str]] = {
    "chat": frozenset({"messages"}),
    "prompt_completion": frozenset({"prompt", "completion"}),
    "text": frozenset({"text"}),
}
TURN_KEYS = ("role", "content", "name", "weight")
# OpenAI's chat format allows these for function calling; tuneloop does not train tool use yet, and
# dropping them silently would train a different conversation from the one the user wrote.
TOOL_TURN_KEYS = ("tool_calls", "function_call", "tool_call_id")
TOOL_ROLES = ("tool", "function")
TOOL_LINE_KEYS = ("tools", "functions", "parallel_tool_calls")
TOOLS_REFUSED = "tuneloop does not train tool calls; remove tool turns (or these conversations) from the data"
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for a participant's name
MAX_LINE_BYTES = MAX_ROW_BYTES
MAX_LISTED = 50
# Reasons kept per row (a 1 MiB line of empty turns would otherwise give ~700,000 of them); a user's
# value shown in one is cut to MAX_SHOWN characters (one key can be a megabyte long).
MAX_REASONS = 10


class DataError(ConfigError):
    """A data file is missing, malformed, too small, or does not fit the task."""


@dataclass(frozen=True)
class Message:
    """One chat turn. `name` goes to the chat template as the server passes it; `weight` (assistant
    turns only, OpenAI's field) 0 keeps the turn as context without loss."""

    role: str
    content: str
    name: str | None = None
    weight: int | None = None

    @property
    def trained(self) -> bool:
        return self.role == "assistant" and self.weight != 0

    def turn(self) -> dict[str, str]:
        """The turn as a chat template (and the OpenAI API) reads it."""
        out = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        return out

    def record(self) -> dict[str, Any]:
        return {**self.turn(), **({"weight": self.weight} if self.weight is not None else {})}

    def body(self) -> list[Any]:
        """The canonical form keys hash: [role, content], plus the optional fields when set."""
        extra = {k: v for k, v in (("name", self.name), ("weight", self.weight)) if v is not None}
        return [self.role, self.content, extra] if extra else [self.role, self.content]


@dataclass(frozen=True, kw_only=True)
class Example:
    """One validated row: `format` says which of the content fields are set; `line` is its row number."""

    format: Format
    line: int
    source: str = ""
    messages: tuple[Message, ...] = ()
    prompt: str | None = None
    completion: str | None = None
    text: str | None = None

    def key(self) -> str:
        """Canonical JSON of the content only (no line or file): equal keys mean exact duplicates."""
        if self.format == "chat":
            body: Any = [m.body() for m in self.messages]
        elif self.format == "prompt_completion":
            body = [self.prompt, self.completion]
        else:
            body = self.text
        return json.dumps([self.format, body], ensure_ascii=False, separators=(",", ":"))

    def prompt_key(self) -> str:
        """Like `key`, over what the model is given only (not the answer): equal for the same question
        whatever its answer, so a corrected answer can replace an outdated one."""
        if self.format == "chat":
            body: Any = [m.body() for m in self.messages[:-1]]
        else:
            body = self.prompt if self.format == "prompt_completion" else self.text
        return json.dumps([self.format, body], ensure_ascii=False, separators=(",", ":"))

    def record(self) -> dict[str, Any]:
        """The example as a JSONL object of its format, as `read_examples` reads it back."""
        if self.format == "chat":
            return {"messages": [m.record() for m in self.messages]}
        if self.format == "prompt_completion":
            return {"prompt": self.prompt, "completion": self.completion}
        return {"text": self.text}


@dataclass
class Scan:
    """Everything reading one source found: its examples, the problems per row, the format of each
    recognisable row, and the table columns no format uses."""

    path: Path
    kind: Kind
    examples: list[Example] = field(default_factory=list)
    problems: dict[int, list[str]] = field(default_factory=dict)
    formats: dict[int, Format] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.examples) + len(self.problems)


def scan(
    path: Path, *, columns: Mapping[RowField, str] | None = None, max_line_bytes: int = MAX_LINE_BYTES
) -> Scan:
    """Read every row of a data source and check it, collecting problems instead of raising on them."""
    try:
        source = open_source(path, columns, max_line_bytes)
        found = Scan(path, source.kind)
        for number, obj, problem in source.rows():
            if problem is not None or obj is None:
                found.problems[number] = [problem or "unreadable row"]
                continue
            fmt, example, reasons = check_row(obj, number, str(path))
            if fmt is not None:
                found.formats[number] = fmt
            if reasons:
                found.problems[number] = reasons
            elif example is not None:
                found.examples.append(example)
    except SourceError as exc:
        raise DataError(str(exc)) from None
    found.ignored_columns = source.ignored
    if found.formats:
        counts = Counter(found.formats.values())
        # Ties go to the format seen first (Counter keeps insertion order), so the report is stable.
        majority, count = counts.most_common(1)[0]
        for number, fmt in found.formats.items():
            if fmt != majority:
                found.problems.setdefault(number, []).append(
                    f"{fmt} line in a file of mostly {majority} lines ({count} of {len(found.formats)}); "
                    "a file holds one format"
                )
        found.examples = [ex for ex in found.examples if ex.line not in found.problems]
    return found


def read_examples(
    path: Path,
    *,
    task: Task | None = None,
    min_examples: int = 1,
    max_line_bytes: int = MAX_LINE_BYTES,
    columns: Mapping[RowField, str] | None = None,
) -> list[Example]:
    """Read and validate a data source; raise one DataError listing every bad row, else return examples."""
    found = scan(path, columns=columns, max_line_bytes=max_line_bytes)
    problems, examples = found.problems, found.examples
    if problems:
        head = f"{path}: {len(problems)} bad line(s); fix them and resubmit (no training was started):"
        # Only the rows the report lists are formatted; the rest are counted.
        listed = [f"{path}:{n}: {'; '.join(problems[n])}" for n in sorted(problems)[:MAX_LISTED]]
        raise DataError(report(head, listed, total=len(problems)))
    if not examples:
        raise DataError(f"{path} holds no examples (empty, or only blank lines)")
    if len(examples) < min_examples:
        raise DataError(f"{path} holds {len(examples)} examples; at least {min_examples} are needed")
    if task == "sft" and examples[0].format == "text":
        raise DataError(
            f'{path} holds raw text ({{"text"}}) lines, but task sft trains on answers and needs chat '
            '({"messages"}) or prompt/completion data; use task: uft to train on raw text'
        )
    return examples


def reference_answer(example: Example) -> str | None:
    """The answer exact-match scoring compares with: last assistant turn or completion; None for text."""
    if example.format == "chat":
        return example.messages[-1].content
    return example.completion


def report(head: str, entries: list[str], total: int | None = None) -> str:
    """A DataError message: the head, then one indented entry per line, capped at MAX_LISTED entries;
    `total` counts the entries when only the first ones were formatted."""
    listed = [f"  {entry}" for entry in entries[:MAX_LISTED]]
    total = len(entries) if total is None else total
    if total > MAX_LISTED:
        listed.append(f"  ... and {total - MAX_LISTED} more")
    return "\n".join([head, *listed])


def check_row(
    obj: dict[str, Any], lineno: int, source: str
) -> tuple[Format | None, Example | None, list[str]]:
    """(format if recognisable, example if valid, reasons it is not) of one row object."""
    matched = [fmt for fmt, keys in KEYS.items() if keys & obj.keys()]
    if len(matched) != 1:
        found = cut(", ".join(repr(k) for k in itertools.islice(obj, MAX_REASONS + 1)) or "none")
        why = "keys of several formats" if matched else "no known keys"
        expected = "'messages' (chat), 'prompt' + 'completion', or 'text'"
        return None, None, [f"{why} (found {found}); expected {expected}"]
    fmt = matched[0]
    reasons = _capped(_row_problems(obj, fmt))
    if reasons:
        return fmt, None, reasons
    if fmt == "chat":
        messages = tuple(
            Message(m["role"], m["content"], m.get("name"), None if "weight" not in m else int(m["weight"]))
            for m in obj["messages"]
        )
        return fmt, Example(format=fmt, line=lineno, source=source, messages=messages), []
    fields = {k: obj[k] for k in KEYS[fmt]}
    return fmt, Example(format=fmt, line=lineno, source=source, **fields), []


def _row_problems(obj: dict[str, Any], fmt: Format) -> Iterator[str]:
    tools = [k for k in obj if k in TOOL_LINE_KEYS]
    if tools and fmt == "chat":
        yield f"{', '.join(map(repr, tools))}: {TOOLS_REFUSED}"
    yield from (
        f"unknown key {_shown(k)} in a {fmt} line" for k in obj if k not in KEYS[fmt] and k not in tools
    )
    yield from (f"missing key {k!r}" for k in sorted(KEYS[fmt] - obj.keys()))
    if fmt == "chat":
        yield from _chat_problems(obj.get("messages"))
    else:
        yield from (r for k in sorted(KEYS[fmt] & obj.keys()) if (r := _string_problem(k, obj[k])))


def _chat_problems(messages: object) -> Iterator[str]:
    if not isinstance(messages, list) or not messages:
        yield f"'messages' must be a non-empty list of turns, got {_kind(messages)}"
        return
    for i, turn in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(turn, dict):
            yield f"{where} must be an object with 'role' and 'content', got {_kind(turn)}"
            continue
        tools = [k for k in turn if k in TOOL_TURN_KEYS]
        if tools or turn.get("role") in TOOL_ROLES:
            what = f"has {', '.join(map(repr, tools))}" if tools else f"has role {turn.get('role')!r}"
            yield f"{where} {what}: {TOOLS_REFUSED}"
            continue
        yield from (f"unknown key {_shown(k)} in {where}" for k in turn if k not in TURN_KEYS)
        yield from (f"{where} is missing {k!r}" for k in ("role", "content") if k not in turn)
        role = turn.get("role")
        if "role" in turn and role not in ROLES:
            yield f"{where}.role {_shown(role)} is not one of {', '.join(ROLES)}"
        if "content" in turn and (problem := _string_problem(f"{where}.content", turn["content"])):
            yield problem
        if "name" in turn and not (isinstance(turn["name"], str) and NAME.match(turn["name"])):
            yield f"{where}.name must be 1-64 letters, digits, '_' or '-', got {_shown(turn['name'])}"
        if "weight" in turn:
            weight = turn["weight"]
            if role != "assistant":
                yield f"{where}.weight is only for assistant turns (it says whether one is trained)"
            elif isinstance(weight, bool) or weight not in (0, 1):
                yield f"{where}.weight must be 0 (context only) or 1 (trained), got {_shown(weight)}"
    roles = [turn.get("role") for turn in messages if isinstance(turn, dict)]
    if roles and roles[-1] != "assistant":
        yield f"the last turn must be the assistant's answer, not {_shown(roles[-1])}"
    if "user" not in roles[:-1]:
        yield "a user turn must come before the final assistant turn"
    weights = [t.get("weight") for t in messages if isinstance(t, dict) and t.get("role") == "assistant"]
    if weights and all(w == 0 and not isinstance(w, bool) for w in weights):
        yield "every assistant turn has weight 0, so the conversation trains nothing; set one to 1"


def _capped(reasons: Iterator[str]) -> list[str]:
    """The first MAX_REASONS reasons; the rest are counted and dropped one by one, never kept."""
    kept = list(itertools.islice(reasons, MAX_REASONS))
    more = sum(1 for _ in reasons)
    return [*kept, f"and {more} more"] if more else kept


def _shown(value: object) -> str:
    """A value from the user's data as a reason shows it: its repr, cut to MAX_SHOWN characters."""
    return cut(repr(value[: MAX_SHOWN + 1] if isinstance(value, str) else value))


def _string_problem(name: str, value: object) -> str | None:
    if not isinstance(value, str):
        return f"{name!r} must be a string, got {_kind(value)}"
    if not value.strip():
        return f"{name!r} is empty"
    return None


_kind = kind_of
