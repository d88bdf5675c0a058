"""Machine-readable command output: what `--json` prints, in one place.

Every list and status command takes `--json` and prints one JSON document on stdout (a list of
objects for lists, an object for a status), with times as ISO 8601 in UTC and nothing else on
stdout, so `tuneloop adapters list --json | jq` works. The keys are the same words the table shows.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def shortened(text: str, limit: int) -> str:
    """`text` as a message or a table shows it: at most `limit` characters, ending in "..." if cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def iso(when: datetime | None) -> str | None:
    """A registry time (stored naive in UTC) as ISO 8601 with its offset."""
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def print_json(document: Any) -> None:
    """Print one JSON document (indented, UTF-8) and a newline on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False, default=_default) + "\n")
    sys.stdout.flush()
