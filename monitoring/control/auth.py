"""The control API's bearer token: where it comes from, and the constant-time check of a request.

`POST /v1/alerts` changes state (it records alerts and can start a retrain), so it needs the token;
`/health` and `/metrics` are read-only and stay open (README, "Monitoring"). The token is
TUNELOOP_CONTROL_TOKEN, else the contents of TUNELOOP_CONTROL_TOKEN_FILE. `tuneloop control` creates
that file with a fresh token (mode 0600) when neither is set, so the webhook is never left open;
Alertmanager sends it with `http_config.authorization` (`credentials_file:` that file, or on
Kubernetes `credentials:` from the chart's Secret).
"""

from __future__ import annotations

import hmac
import logging

from tuneloop.platform import settings
from tuneloop.platform.errors import ConfigError
from tuneloop.platform.private_files import new_token, write_private_file

log = logging.getLogger(__name__)


def control_token(*, create: bool = False) -> str:
    """The configured token; "" when there is none (then every authenticated request is refused).

    With `create`, a missing token file is created with a fresh token (only when
    TUNELOOP_CONTROL_TOKEN is unset)."""
    value = settings.TUNELOOP_CONTROL_TOKEN.get().strip()
    if value:
        return value
    path = settings.TUNELOOP_CONTROL_TOKEN_FILE.get()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if not create:
            return ""
        token = new_token()
        write_private_file(path, token)
        log.warning("created the control API token in %s (send it as `Authorization: Bearer`)", path)
        return token
    except OSError as exc:
        raise ConfigError(f"cannot read TUNELOOP_CONTROL_TOKEN_FILE {path}: {exc}") from None
    if not token:
        raise ConfigError(f"TUNELOOP_CONTROL_TOKEN_FILE {path} is empty: put the control API token in it")
    return token


def authorized(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token` as a bearer token (compared in constant time)."""
    if not token or not header:
        return False
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode("utf-8"), token.encode("utf-8"))
