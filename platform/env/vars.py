"""`Var`, one declared environment variable, and the parsers settings use.

The only place tuneloop reads `os.environ` for a setting (platform/settings.py re-exports every
declaration; code reads `settings.X.get()`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Var(Generic[T]):
    """One environment variable: its name, how to parse it, and its default."""

    name: str
    parse: Callable[[str], T]
    default: Callable[[], T]
    doc: str
    secret: bool = False
    """A credential: `tuneloop env` shows *** instead of its value."""

    def get(self) -> T:
        raw = os.environ.get(self.name)
        if raw is None or raw == "":
            return self.default()
        try:
            return self.parse(raw)
        except ValueError as exc:
            from tuneloop.platform.errors import ConfigError

            raise ConfigError(f"{self.name}={raw!r} is not valid: {exc}") from None


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _choice(raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not names:
        raise ValueError("expected comma-separated names")
    return names


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError("expected a fraction between 0 and 1")
    return value


def _json_object(raw: str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value
