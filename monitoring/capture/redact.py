"""Redaction of captured text: the built-in masker, the per-field cap, and loading the configured hook.

The hook runs on the writer's background thread, never in the request path, and a hook that
fails drops the record rather than storing text it was meant to clean.

Redaction must stay linear in the text's length: a regex call is one C call that holds the GIL,
so a pattern that backtracks quadratically on one long word (the old e-mail pattern took hours on
2 MB of letters) freezes every thread of the gateway, its event loop included. Both patterns below
may only *start* where a run of their characters starts (the look-behinds), so every character is
scanned a bounded number of times; and `bounded` caps what any field holds before it is redacted.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from tuneloop.platform.errors import ConfigError

Redactor = Callable[[str], str]

# A local part, `@`, a dotted domain. Starting only at the beginning of a run of local-part
# characters keeps the scan linear: inside a run the look-behind fails at once.
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Four or more digits, optionally split by single spaces, dots or dashes: phone, card and account
# numbers, IDs. Shorter numbers ("3 apples", "top 10") carry meaning and rarely identify anyone.
DIGIT_RUN = re.compile(r"(?<!\d)\d(?:[ .\-]?\d){3,}")
NO_REDACTION = "none"
TRUNCATED = "…[truncated {dropped} chars]"
"""Appended to a capped field: the stored text says it is not the whole of what was sent."""


def mask_pii(text: str) -> str:
    """`text` with e-mail addresses replaced by `<email>` and digit runs by `<number>`."""
    return DIGIT_RUN.sub("<number>", EMAIL.sub("<email>", text))


def bounded(text: str, limit: int) -> str:
    """`text` cut to `limit` characters plus a note of how many were dropped (unchanged if it fits)."""
    if limit <= 0 or len(text) <= limit:
        return text
    return text[:limit] + TRUNCATED.format(dropped=len(text) - limit)


def is_truncated(text: str) -> bool:
    """Whether `text` was cut by `bounded`."""
    return text.endswith(" chars]") and "…[truncated " in text[-40:]


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
