"""/health (the gateway process lives), /ready (it can serve), /metrics and /metrics/engine.

/health and /ready need no key and say nothing about adapters. /metrics serves the gateway's own
`tuneloop_*` series (monitoring/metrics.py; all workers' together when it runs several);
/metrics/engine passes vLLM's `vllm:*` series through, since the engine listens on loopback only.
Both need an admin key, because their labels name every alias —
unless TUNELOOP_METRICS_PUBLIC=1 (a Prometheus that cannot send a key).
"""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from tuneloop.monitoring.metrics import exposition
from tuneloop.serve.errors import OpenAIError, engine_unavailable
from tuneloop.serve.request.pipeline import replica_of

router = APIRouter()


@router.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    is_ready, reason = await replica_of(request).ready()
    if is_ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse(
        {"status": "not ready", "reason": reason}, status_code=503, headers={"Retry-After": "5"}
    )


async def _require_metrics_access(request: Request) -> None:
    replica = replica_of(request)
    if replica.config.metrics_public:
        return
    principal = await replica.keys.authenticate(request.headers.get("authorization"))
    if not principal.admin:
        raise OpenAIError(403, "Metrics need an admin key.", type="permission_error", code="admin_required")


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    await _require_metrics_access(request)
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/metrics/engine")
async def engine_metrics(request: Request) -> Response:
    await _require_metrics_access(request)
    replica = replica_of(request)
    try:
        upstream = await replica.client.get(f"{replica.engine_url}/metrics", timeout=5.0)
    except httpx.HTTPError:
        raise engine_unavailable("The engine is not reachable (restarting?); retry shortly.") from None
    return Response(upstream.content, status_code=upstream.status_code, media_type=CONTENT_TYPE_LATEST)
