"""Redaction of captured text: the built-in masker and loading the configured hook.

The hook runs on the writer's background thread, never in the request path, and a hook that
fails drops the record rather than storing text it was meant to clean.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from tuneloop.platform.errors import ConfigError

Redactor = Callable[[str], str]

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Four or more digits, optionally split by single spaces, dots or dashes: phone, card and account
# numbers, IDs. Shorter numbers ("3 apples", "top 10") carry meaning and rarely identify anyone.
DIGIT_RUN = re.compile(r"\d(?:[ .\-]?\d){3,}")
NO_REDACTION = "none"


def mask_pii(text: str) -> str:
    """`text` with e-mail addresses replaced by `<email>` and digit runs by `<number>`."""
    return DIGIT_RUN.sub("<number>", EMAIL.sub("<email>", text))


def load_redactor(spec: str) -> Redactor | None:
    """The function named by `module:function`, or None for `none`."""
    if spec.strip().lower() == NO_REDACTION:
        return None
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"redaction hook {spec!r} is not `module:function` (or `{NO_REDACTION}`)")
    try:
        hook = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load redaction hook {spec!r}: {exc}") from None
    if not callable(hook):
        raise ConfigError(f"redaction hook {spec!r} is a {type(hook).__name__}, not a function")
    redactor: Redactor = hook
    return redactor
