"""Named plug-in classes (fine-tuning methods, drift detectors): one way to register and to find them.

A plug-in family is a `Plugins` instance next to its base class. Its classes register with the
`register` decorator under their `name`; the built-in modules are imported on first lookup, so
naming a plug-in never depends on what happened to be imported before.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Generic, TypeVar, cast

from tuneloop.platform.errors import ConfigError

T = TypeVar("T")
C = TypeVar("C", bound=type)


class Plugins(Generic[T]):
    """The registered classes of one family, by name (each class has a `name` class attribute)."""

    def __init__(self, kind: str, plural: str, package: str, builtins: Sequence[str]) -> None:
        self.kind, self.plural = kind, plural  # "drift detector", "detectors": for messages
        self._modules = [f"{package}.{module}" for module in builtins]
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: C) -> C:
        """Class decorator: make `cls` available as `lookup(cls.name)`."""
        name: str = cast(Any, cls).name
        known = self._classes.get(name)
        if known is not None and known is not cls:
            raise TypeError(f"{self.kind} {name!r} is registered twice ({known.__name__}, {cls.__name__})")
        self._classes[name] = cls
        return cls

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load_builtins()
        return sorted(self._classes)

    def lookup(self, name: str) -> type[T]:
        """The class registered as `name`; an unknown name is a ConfigError listing the known ones."""
        self._load_builtins()
        try:
            return self._classes[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names())}"
            ) from None

    def _load_builtins(self) -> None:
        for module in self._modules:
            importlib.import_module(module)
