"""Every environment variable tuneloop reads, declared once, read lazily.

The declarations live in platform/env/, one module per part of tuneloop (state and network,
serving, capture, monitoring); this module gathers them all. Nothing else in tuneloop touches
`os.environ`: code calls `settings.X.get()` (or the helpers below) so a reader can see in one place
what can be configured and what the default is. Defaults are for the embedded mode: state under
~/.tuneloop, every server on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from tuneloop.platform.env import capture, monitoring, serving, state
from tuneloop.platform.env.capture import *  # noqa: F403
from tuneloop.platform.env.monitoring import *  # noqa: F403
from tuneloop.platform.env.serving import *  # noqa: F403
from tuneloop.platform.env.state import *  # noqa: F403
from tuneloop.platform.env.state import (
    HF_HOME,
    HF_HUB_OFFLINE,
    RAY_JOB_CONFIG_JSON_ENV_VAR,
    TUNELOOP_ALLOW_REMOTE_BIND,
    TUNELOOP_HOST,
    TUNELOOP_RAY_DIR,
)
from tuneloop.platform.env.vars import LOOPBACK, Var

log = logging.getLogger(__name__)

# In the order `tuneloop env` lists them: by part, each in its declaration order.
_DECLARED = (v for part in (state, serving, capture, monitoring) for v in vars(part).values())
ALL: tuple[Var[object], ...] = tuple({v.name: v for v in _DECLARED if isinstance(v, Var)}.values())


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


def hub_env() -> dict[str, str]:
    """The Hugging Face cache variables that are set here, for processes that must resolve the same
    hub ids (Ray jobs, the embedded head)."""
    return {var.name: os.environ[var.name] for var in (HF_HOME, HF_HUB_OFFLINE) if os.environ.get(var.name)}


def ray_job_submission_id() -> str | None:
    """The Ray job submission id when this process is a job's driver (`ray job submit`), else None."""
    metadata = RAY_JOB_CONFIG_JSON_ENV_VAR.get().get("metadata")
    value = metadata.get("job_submission_id") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) and value else None


def ray_job_env_vars() -> dict[str, str]:
    """Environment variables the Ray job of this driver already gives its workers (its runtime env)."""
    runtime_env = RAY_JOB_CONFIG_JSON_ENV_VAR.get().get("runtime_env")
    env_vars = runtime_env.get("env_vars") if isinstance(runtime_env, dict) else None
    return {str(k): str(v) for k, v in env_vars.items()} if isinstance(env_vars, dict) else {}


@contextmanager
def exported_env(values: Mapping[str, str]) -> Iterator[None]:
    """Put `values` into this process's environment for the duration, for libraries that only read
    them from there; the previous values come back afterwards.

    Ray reads its loopback and token-auth switches from the environment of the process that starts
    a cluster, and the processes it starts inherit them: `tuneloop train` uses this around the
    private local Ray it starts when it joins no cluster.
    """
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def take_handed(name: str) -> str:
    """A value a parent handed to this process in the environment variable `name` (not a user
    setting), removed from the environment so that the processes this one starts do not inherit it.

    Raises ConfigError when the parent handed nothing.
    """
    value = os.environ.pop(name, None)
    if value is None:
        from tuneloop.platform.errors import ConfigError

        raise ConfigError(f"{name} is not set: this process must be started by its tuneloop parent")
    return value


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of this process's environment plus `extra`, for subprocesses we start."""
    env = dict(os.environ)
    env.update(extra or {})
    return env


# `scheme://user:`, the scheme starting where a run of scheme characters starts (so that no run is
# scanned from each of its characters: linear on any text).
_URL_USER = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:\s]*:")
_SPACE = re.compile(r"\s")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)[^&#\s'\"]*", re.IGNORECASE)
HIDDEN = "***"


def redact_url(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` URL in it, and every
    `?password=` query value, replaced by ***."""
    return _QUERY_PASSWORD.sub(lambda m: f"{m.group('head')}{HIDDEN}", _hide_url_passwords(text))


def _hide_url_passwords(text: str) -> str:
    """The password runs to the last "@" before the next space: SQLAlchemy takes one with "/", "#"
    or "?" unencoded. Each step moves past that "@" or the end of the run, so the cost is linear."""
    parts, pos = [], 0
    while (user := _URL_USER.search(text, pos)) is not None:
        space = _SPACE.search(text, user.end())
        run_end = space.start() if space else len(text)
        at = text.rfind("@", user.end(), run_end)
        if at < 0:  # no password here, nor in the rest of this run
            parts.append(text[pos:run_end])
            pos = run_end
            continue
        parts.append(f"{text[pos : user.end()]}{HIDDEN}")
        pos = at
    parts.append(text[pos:])
    return "".join(parts)


def shown_value(var: Var[Any]) -> str:
    """The value of `var` as it may be printed: secrets as *** (or empty when unset), passwords in
    URLs masked."""
    raw = var.get()
    if raw is None:
        value = ""
    elif isinstance(raw, tuple | frozenset):  # lists of names, as they are written
        value = ",".join(raw if isinstance(raw, tuple) else sorted(raw))
    else:
        value = str(raw)
    if var.secret:
        return HIDDEN if value else ""
    return redact_url(value)


def describe() -> list[tuple[str, str, str]]:
    """(name, current value, doc) for every variable: `tuneloop env` prints this, secrets masked."""
    return [(v.name, shown_value(v), v.doc) for v in ALL]
