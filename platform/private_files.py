"""Files that hold a credential: written readable by their owner only, never world- or group-readable.

Tokens (the control API's, Ray's) and the registry URL a training job reads its password from live
in such files, referred to by path, so the secret itself never travels in an environment that
others can read back (a Ray job's runtime env is shown by the Jobs API and the dashboard).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private_file(path: Path, text: str) -> Path:
    """Write `text` to `path` with mode 0600, replacing any file there; its folder is created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside it under a fresh name, then renamed: a reader never sees a half-written secret,
    # and the mode is 0600 from the first byte whatever the umask or the old file's mode.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def new_token() -> str:
    """A random token (64 hex characters)."""
    return secrets.token_hex(32)
