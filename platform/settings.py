"""Every environment variable tuneloop reads, declared once, read lazily.

Nothing else in tuneloop touches `os.environ`: code calls `settings.X.get()` (or the helpers at
the bottom) so a reader can see in one place what can be configured and what the default is.
Defaults are for the embedded mode: state under ~/.tuneloop, every server on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Var(Generic[T]):
    """One environment variable: its name, how to parse it, and its default."""

    name: str
    parse: Callable[[str], T]
    default: Callable[[], T]
    doc: str

    def get(self) -> T:
        raw = os.environ.get(self.name)
        if raw is None or raw == "":
            return self.default()
        try:
            return self.parse(raw)
        except ValueError as exc:
            from tuneloop.platform.errors import ConfigError

            raise ConfigError(f"{self.name}={raw!r} is not valid: {exc}") from None


def _home() -> Path:
    return TUNELOOP_HOME.get()


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


# -- where state lives
TUNELOOP_HOME: Var[Path] = Var(
    "TUNELOOP_HOME",
    _path,
    lambda: Path.home() / ".tuneloop",
    "Folder for the embedded mode's state: registry database, artifacts, models, logs.",
)
TUNELOOP_DB_URL: Var[str] = Var(
    "TUNELOOP_DB_URL",
    str,
    lambda: f"sqlite:///{_home() / 'registry.db'}",
    "SQLAlchemy URL of the registry (SQLite under TUNELOOP_HOME by default; Postgres in production).",
)
TUNELOOP_ARTIFACTS: Var[str] = Var(
    "TUNELOOP_ARTIFACTS",
    str,
    lambda: str(_home() / "artifacts"),
    "Root of the artifact store: a local folder or any fsspec URL (s3://bucket/prefix, ...).",
)
TUNELOOP_MODELS_DIR: Var[Path] = Var(
    "TUNELOOP_MODELS_DIR",
    _path,
    lambda: _home() / "models",
    "Where `tuneloop models pull` puts converted Hugging Face model folders.",
)

# -- network: loopback unless told otherwise
TUNELOOP_HOST: Var[str] = Var(
    "TUNELOOP_HOST",
    str,
    lambda: LOOPBACK,
    "Address the gateway and control API bind to. Anything but loopback logs a warning.",
)
TUNELOOP_PORT: Var[int] = Var("TUNELOOP_PORT", int, lambda: 8000, "Port of the OpenAI-compatible gateway.")
TUNELOOP_ENGINE_PORT: Var[int] = Var(
    "TUNELOOP_ENGINE_PORT", int, lambda: 8100, "Port of the vLLM engine behind the gateway (loopback only)."
)
TUNELOOP_RAY_ADDRESS: Var[str] = Var(
    "TUNELOOP_RAY_ADDRESS",
    str,
    lambda: f"http://{LOOPBACK}:8265",
    "Ray dashboard / Jobs API address used to submit training jobs.",
)
TUNELOOP_RAY_DIR: Var[Path] = Var(
    "TUNELOOP_RAY_DIR",
    _path,
    lambda: _home() / "ray",
    "Private Ray temp folder and auth token for the embedded Ray head (never Ray's shared default).",
)

# -- behaviour
TUNELOOP_LOG_LEVEL: Var[str] = Var("TUNELOOP_LOG_LEVEL", str, lambda: "INFO", "Python logging level.")
TUNELOOP_ALLOW_REMOTE_BIND: Var[bool] = Var(
    "TUNELOOP_ALLOW_REMOTE_BIND",
    _bool,
    lambda: False,
    "Risky: allow servers to bind to non-loopback addresses (Kubernetes pods set this).",
)

ALL: tuple[Var[object], ...] = tuple(v for v in globals().values() if isinstance(v, Var))


def bind_host(host: str | None = None) -> str:
    """The address a server should bind to, refusing non-loopback unless explicitly allowed."""
    from tuneloop.platform.errors import ConfigError

    chosen = host or TUNELOOP_HOST.get()
    if chosen in {LOOPBACK, "localhost", "::1"}:
        return chosen
    if not TUNELOOP_ALLOW_REMOTE_BIND.get():
        raise ConfigError(
            f"refusing to bind to {chosen!r}: set TUNELOOP_ALLOW_REMOTE_BIND=1 to listen beyond loopback"
        )
    log.warning("binding to %s: reachable beyond this machine", chosen)
    return chosen


def ray_env() -> dict[str, str]:
    """Variables every Ray process and client of the embedded head needs (ENVIRONMENT.md).

    Loopback-only listeners, and token auth with a private token file so a stray
    ~/.ray/auth_token never turns auth on behind our back.
    """
    ray_dir = TUNELOOP_RAY_DIR.get()
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(ray_dir / "auth_token"),
    }


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of this process's environment plus `extra`, for subprocesses we start."""
    env = dict(os.environ)
    env.update(extra or {})
    return env


def describe() -> list[tuple[str, str, str]]:
    """(name, current value, doc) for every variable: `tuneloop env` prints this."""
    return [(v.name, str(v.get()), v.doc) for v in ALL]
