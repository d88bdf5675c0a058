"""Training data files: JSONL in one of three formats, every line validated before any compute.

The formats are the ones users already have: OpenAI chat (`{"messages": [...]}` ending with an
assistant turn), prompt/completion (`{"prompt", "completion"}`) and raw text (`{"text"}`). A file holds
one format. Reading never stops at the first problem: every bad line is collected and one `DataError`
lists them all as `path:line: reason`, so a user fixes a file in one round trip rather than twenty.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneloop.platform.errors import ConfigError
from tuneloop.platform.spec import Task

Format = Literal["chat", "prompt_completion", "text"]
ROLES = ("system", "user", "assistant")
KEYS: dict[Format, frozenset[str]] = {
    "chat": frozenset({"messages"}),
    "prompt_completion": frozenset({"prompt", "completion"}),
    "text": frozenset({"text"}),
}
# A line this long is a broken export (a whole corpus on one line), not an example; the cap also
# keeps a bad file from being parsed into memory in one piece.
MAX_LINE_BYTES = 1 << 20
MAX_LISTED = 50


class DataError(ConfigError):
    """A data file is missing, malformed, too small, or does not fit the task."""


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: str
    content: str


@dataclass(frozen=True, kw_only=True)
class Example:
    """One validated line: `format` says which of the content fields are set."""

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
            body: Any = [[m.role, m.content] for m in self.messages]
        elif self.format == "prompt_completion":
            body = [self.prompt, self.completion]
        else:
            body = self.text
        return json.dumps([self.format, body], ensure_ascii=False, separators=(",", ":"))

    def prompt_key(self) -> str:
        """Like `key`, over what the model is given only (not the answer): equal for the same question
        whatever its answer, so a corrected answer can replace an outdated one."""
        if self.format == "chat":
            body: Any = [[m.role, m.content] for m in self.messages[:-1]]
        else:
            body = self.prompt if self.format == "prompt_completion" else self.text
        return json.dumps([self.format, body], ensure_ascii=False, separators=(",", ":"))

    def record(self) -> dict[str, Any]:
        """The example as a JSONL object of its format, as `read_examples` reads it back."""
        if self.format == "chat":
            return {"messages": [{"role": m.role, "content": m.content} for m in self.messages]}
        if self.format == "prompt_completion":
            return {"prompt": self.prompt, "completion": self.completion}
        return {"text": self.text}


def reference_answer(example: Example) -> str | None:
    """The answer exact-match scoring compares with: last assistant turn or completion; None for text."""
    if example.format == "chat":
        return example.messages[-1].content
    return example.completion


def read_examples(
    path: Path, *, task: Task | None = None, min_examples: int = 1, max_line_bytes: int = MAX_LINE_BYTES
) -> list[Example]:
    """Read and validate a JSONL file; raise one DataError listing every bad line, else return examples."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    problems: dict[int, list[str]] = {}
    formats: dict[int, Format] = {}
    examples: list[Example] = []
    for lineno, raw in _raw_lines(path, max_line_bytes):
        if raw is None:
            problems[lineno] = [f"line is longer than {max_line_bytes} bytes; split it into several examples"]
            continue
        fmt, example, reasons = _parse_line(raw, lineno, str(path))
        if fmt is not None:
            formats[lineno] = fmt
        if reasons:
            problems[lineno] = reasons
        elif example is not None:
            examples.append(example)
    if formats:
        counts = Counter(formats.values())
        # Ties go to the format seen first (Counter keeps insertion order), so the report is stable.
        majority, count = counts.most_common(1)[0]
        for lineno, fmt in formats.items():
            if fmt != majority:
                problems.setdefault(lineno, []).append(
                    f"{fmt} line in a file of mostly {majority} lines ({count} of {len(formats)}); "
                    "a file holds one format"
                )
    if problems:
        head = f"{path}: {len(problems)} bad line(s); fix them and resubmit (no training was started):"
        listed = [f"{path}:{lineno}: {'; '.join(reasons)}" for lineno, reasons in sorted(problems.items())]
        raise DataError(report(head, listed))
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


def report(head: str, entries: list[str]) -> str:
    """A DataError message: the head, then one indented entry per line, capped at MAX_LISTED entries."""
    listed = [f"  {entry}" for entry in entries[:MAX_LISTED]]
    if len(entries) > MAX_LISTED:
        listed.append(f"  ... and {len(entries) - MAX_LISTED} more")
    return "\n".join([head, *listed])


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


def _parse_line(raw: bytes, lineno: int, source: str) -> tuple[Format | None, Example | None, list[str]]:
    """(format if recognisable, example if valid, reasons it is not); blank lines give (None, None, [])."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, None, [f"not valid UTF-8 (byte {exc.start})"]
    if not text.strip():
        return None, None, []
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            return None, None, [f"truncated JSON: the line ends inside a value ({exc.msg})"]
        return None, None, [f"invalid JSON: {exc.msg} at column {exc.pos + 1}"]
    if not isinstance(obj, dict):
        return None, None, [f"expected a JSON object, got {_kind(obj)}"]
    matched = [fmt for fmt, keys in KEYS.items() if keys & obj.keys()]
    if len(matched) != 1:
        found = ", ".join(repr(k) for k in obj) or "none"
        why = "keys of several formats" if matched else "no known keys"
        expected = "'messages' (chat), 'prompt' + 'completion', or 'text'"
        return None, None, [f"{why} (found {found}); expected {expected}"]
    fmt = matched[0]
    reasons = [f"unknown key {k!r} in a {fmt} line" for k in obj if k not in KEYS[fmt]]
    reasons += [f"missing key {k!r}" for k in sorted(KEYS[fmt] - obj.keys())]
    if fmt == "chat":
        reasons += _chat_problems(obj.get("messages"))
    else:
        reasons += [r for k in sorted(KEYS[fmt] & obj.keys()) if (r := _string_problem(k, obj[k]))]
    if reasons:
        return fmt, None, reasons
    if fmt == "chat":
        messages = tuple(Message(m["role"], m["content"]) for m in obj["messages"])
        return fmt, Example(format=fmt, line=lineno, source=source, messages=messages), []
    fields = {k: obj[k] for k in KEYS[fmt]}
    return fmt, Example(format=fmt, line=lineno, source=source, **fields), []


def _chat_problems(messages: object) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return [f"'messages' must be a non-empty list of turns, got {_kind(messages)}"]
    reasons: list[str] = []
    for i, turn in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(turn, dict):
            reasons.append(f"{where} must be an object with 'role' and 'content', got {_kind(turn)}")
            continue
        reasons += [f"unknown key {k!r} in {where}" for k in turn if k not in ("role", "content")]
        reasons += [f"{where} is missing {k!r}" for k in ("role", "content") if k not in turn]
        role = turn.get("role")
        if "role" in turn and role not in ROLES:
            reasons.append(f"{where}.role {role!r} is not one of {', '.join(ROLES)}")
        if "content" in turn and (problem := _string_problem(f"{where}.content", turn["content"])):
            reasons.append(problem)
    roles = [turn.get("role") for turn in messages if isinstance(turn, dict)]
    if roles and roles[-1] != "assistant":
        reasons.append(f"the last turn must be the assistant's answer, not {roles[-1]!r}")
    if "user" not in roles[:-1]:
        reasons.append("a user turn must come before the final assistant turn")
    return reasons


def _string_problem(name: str, value: object) -> str | None:
    if not isinstance(value, str):
        return f"{name!r} must be a string, got {_kind(value)}"
    if not value.strip():
        return f"{name!r} is empty"
    return None


def _kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
