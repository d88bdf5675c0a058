"""`ADAPTER@N`, the name of one stored version everywhere: the CLI, model names, lineage, job specs.

`VersionRef.parse` reads it (None for anything else, such as an alias), `VersionRef.of` insists on
it, and `str()` prints it. An adapter's own name never holds `@`, so the last `@` separates the two.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.platform.errors import ConfigError


@dataclass(frozen=True)
class VersionRef:
    """Version `number` of adapter `adapter`."""

    adapter: str
    number: int

    @classmethod
    def parse(cls, text: str) -> VersionRef | None:
        """`text` as a version reference, or None when it is not one (an alias, a model name)."""
        adapter, sep, number = text.rpartition("@")
        if not (sep and adapter and number.isdigit()):
            return None
        return cls(adapter, int(number))

    @classmethod
    def of(cls, text: str) -> VersionRef:
        """`text` as a version reference; anything else is a ConfigError saying what was expected."""
        ref = cls.parse(text)
        if ref is None:
            raise ConfigError(f"{text!r} is not a version reference: expected ADAPTER@NUMBER")
        return ref

    def __str__(self) -> str:
        return f"{self.adapter}@{self.number}"


def adapter_name(ref: str) -> str:
    """The adapter part of a version reference `ADAPTER@N` (the text itself when it has no `@N`)."""
    parsed = VersionRef.parse(ref)
    return parsed.adapter if parsed else ref
