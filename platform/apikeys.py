"""Gateway API keys: how a key is made, what is stored of it, and how a presented key is checked.

A key is `tl-` plus 32 random bytes (URL-safe base64). The registry stores only its SHA-256 and a
short prefix to tell keys apart in listings: a stolen database does not yield usable keys, and a
plain (unsalted) hash is enough because the secret is random rather than a password. The CLI
(`tuneloop keys create`) and the gateway (serve/auth) both go through this module, so they can
never disagree on the format.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from tuneloop.platform.errors import ConfigError
from tuneloop.platform.registry import Registry

KEY_PREFIX = "tl-"
SHOWN_PREFIX_CHARS = 10
SECRET_BYTES = 32
# `tl-` + token_urlsafe(32): 43 characters of the URL-safe base64 alphabet, no padding.
KEY_FORMAT = re.compile(r"tl-[A-Za-z0-9_-]{43}")
FINE_TUNING_SCOPE = "fine-tuning"
"""A scope that names no adapter: with TUNELOOP_FINE_TUNING=scoped, keys holding it may fine-tune."""


def well_formed(key: str) -> bool:
    """Whether `key` has the shape `create_key` gives every key: checked before any lookup."""
    return KEY_FORMAT.fullmatch(key) is not None


def hash_key(key: str) -> str:
    """The SHA-256 (hex) the registry stores for `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class NewKey:
    """A freshly created key: `secret` is shown once and never stored."""

    secret: str
    prefix: str
    scopes: tuple[str, ...]
    admin: bool


def create_key(registry: Registry, *, scopes: list[str], admin: bool) -> NewKey:
    """Make a key, store its hash with its scopes, and return the secret (the only copy).

    Every scope must name an alias or an adapter the registry knows, so a typo does not silently
    create a key that can call nothing.
    """
    scopes = sorted({s.strip() for s in scopes if s.strip()})
    if admin and scopes:
        raise ConfigError("a key is either --admin or --scope ALIAS[,ALIAS...], not both")
    if not admin and not scopes:
        raise ConfigError("give --scope ALIAS[,ALIAS...] (aliases the key may call) or --admin")
    known = set(registry.aliases()) | {v.adapter.name for v in registry.list_versions()} | {FINE_TUNING_SCOPE}
    unknown = [s for s in scopes if s not in known]
    if unknown:
        raise ConfigError(
            f"unknown alias or adapter {', '.join(map(repr, unknown))} in --scope; "
            f"known: {', '.join(sorted(known)) or 'none yet'} (see `tuneloop adapters list`)"
        )
    secret = KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    prefix = secret[:SHOWN_PREFIX_CHARS]
    registry.add_api_key(hash_key(secret), prefix, scopes=scopes, admin=admin)
    return NewKey(secret=secret, prefix=prefix, scopes=tuple(scopes), admin=admin)
