"""Who may use the fine-tuning API (/v1/files, /v1/fine_tuning/jobs): TUNELOOP_FINE_TUNING.

`all` valid keys, `scoped` (admin keys and keys holding the `fine-tuning` scope), `admin` keys only,
or `off`. What a key may see there: its own files and jobs; an admin key sees everyone's.
"""

from __future__ import annotations

from fastapi import Request

from tuneloop.platform import settings
from tuneloop.platform.apikeys import FINE_TUNING_SCOPE
from tuneloop.serve.auth.keys import Principal
from tuneloop.serve.errors import OpenAIError


async def fine_tuner(request: Request) -> Principal:
    """The caller's key, if it may fine-tune; else 401 (bad key) or 403."""
    replica = request.app.state.replica
    principal: Principal = await replica.keys.authenticate(request.headers.get("authorization"))
    mode = settings.TUNELOOP_FINE_TUNING.get()
    allowed = mode == "all" or (
        mode != "off" and (principal.admin or (mode == "scoped" and FINE_TUNING_SCOPE in principal.scopes))
    )
    if not allowed:
        raise OpenAIError(
            403,
            "This key may not use fine-tuning on this gateway (TUNELOOP_FINE_TUNING="
            f"{mode}; with `scoped`, create keys with `--scope {FINE_TUNING_SCOPE}`).",
            type="permission_error",
            code="fine_tuning_not_allowed",
        )
    return principal


def owner_filter(principal: Principal) -> int | None:
    """The key id rows are filtered by: None (every row) for admin keys."""
    return None if principal.admin else (principal.key_id if principal.key_id is not None else -1)
