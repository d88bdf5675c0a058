"""Answer scorers by name: each maps (prediction, reference) to a score in [0, 1], higher is better.

The comparison itself is platform/answers.py's, so a live score means what the test score at training
time meant. A failed lookup lists the names that exist.
"""

from __future__ import annotations

from collections.abc import Callable

from tuneloop.platform.answers import exact_match, token_f1
from tuneloop.platform.errors import ConfigError

Scorer = Callable[[str, str], float]

SCORERS: dict[str, Scorer] = {"exact_match": exact_match, "token_f1": token_f1}


def get_scorer(name: str) -> Scorer:
    try:
        return SCORERS[name]
    except KeyError:
        known = ", ".join(sorted(SCORERS))
        raise ConfigError(f"unknown evaluation metric {name!r}; known: {known}") from None
