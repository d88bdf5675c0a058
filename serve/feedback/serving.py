"""Accepting feedback: checked against what was captured, and against the caller's key.

Only the key that made the request, or an admin key, may give feedback on it: feedback becomes
training data, so no other key, even one scoped to the same adapter, may steer it. The key must
also still be allowed the model (the same rule as for calling it). A request id a key may not judge
is the same 404 as one that was never captured, so ids cannot be probed. One feedback per request:
a later one replaces the earlier (the store upserts). Who gave it is stored with it, so training
can trust only the feedback TUNELOOP_FEEDBACK_TRUST names.
Requests are captured a moment after they are answered; a lookup that misses waits briefly for
the writer before answering 404. Capture turned off means no request can be found.
"""

from __future__ import annotations

import logging

from fastapi import Request

from tuneloop.monitoring.capture import CapturedRequest
from tuneloop.monitoring.metrics import BASE_VERSION
from tuneloop.platform.refs import adapter_name
from tuneloop.serve.auth.keys import Principal
from tuneloop.serve.errors import OpenAIError
from tuneloop.serve.feedback.protocol import FeedbackIn, FeedbackOut
from tuneloop.serve.protocol import parse_json
from tuneloop.serve.replica import Replica
from tuneloop.serve.request.limits import read_body
from tuneloop.serve.request.pipeline import replica_of

log = logging.getLogger(__name__)


async def create_feedback(request: Request) -> FeedbackOut:
    """Validate, check scope, store (see the module docstring)."""
    replica = replica_of(request)
    principal = await replica.keys.authenticate(request.headers.get("authorization"))
    raw = await read_body(request, replica.config.limits.max_body_bytes)
    feedback = parse_json(raw, FeedbackIn)
    if not replica.capture.on:
        raise _not_found(feedback.request_id, " (capture is off on this gateway: TUNELOOP_CAPTURE_*)")
    try:
        captured = await replica.capture.find(feedback.request_id)
        if captured is None or not _may_see(principal, captured, replica):
            raise _not_found(feedback.request_id)
        stored = await replica.capture.add_feedback(
            feedback, key_id=principal.key_id, by_admin=principal.admin
        )
    except OpenAIError:
        raise
    except Exception:
        log.exception("storing feedback on %s failed", feedback.request_id)
        raise OpenAIError(
            503,
            "The capture store is not reachable; retry shortly.",
            type="server_error",
            code="capture_unavailable",
            headers={"Retry-After": "5"},
        ) from None
    return FeedbackOut(
        id=f"fb-{stored.id}",
        request_id=stored.request_id,
        model=captured.alias,
        label=stored.label,
        rating=stored.rating,
        corrected_answer=stored.corrected_answer,
        created=int(stored.created_at.timestamp()),
    )


def _may_see(principal: Principal, captured: CapturedRequest, replica: Replica) -> bool:
    if not principal.admin and (principal.key_id is None or principal.key_id != captured.key_id):
        return False  # someone else's request (or one captured before keys were recorded)
    if captured.version in (BASE_VERSION, replica.resolver.base_version):  # any key may call the base
        return True
    return principal.may_use(adapter_name(captured.version), replica.follower.snapshot)


def _not_found(request_id: str, why: str = "") -> OpenAIError:
    return OpenAIError(
        404,
        f"No captured request `{request_id}` that this key may give feedback on{why}.",
        param="request_id",
        code="request_not_found",
    )
