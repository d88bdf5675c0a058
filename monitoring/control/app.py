"""The control API: `/health`, `/metrics` (the monitoring metrics) and `POST /v1/alerts`.

`/v1/alerts` takes Alertmanager's webhook body. Every alert that names an alias the registry knows is
recorded as a `drift.alert` event of the alias's adapter (its status, alertname and labels), then
the drift policy is asked about that alias: a firing alert counts as one drift observation, so an
alert alone never bypasses the sustain, cool-down and budget rules. Alerts for unknown aliases, or
without one, are counted as ignored. A body that is not such a payload is a 400.

`/v1/alerts` needs the control token as `Authorization: Bearer` (auth.py; 401 otherwise, checked
before the body is read) and takes at most MAX_ALERT_BODY_BYTES (413). `/health` and `/metrics` are
read-only and open: the control API is never a public endpoint (loopback by default; on Kubernetes a
ClusterIP Service that a NetworkPolicy opens to the namespace and the monitoring namespace only).
The registry work of a webhook call runs in a worker thread, so a slow or locked database never
stalls the event loop (health checks and metrics keep answering).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneloop.monitoring import metrics
from tuneloop.monitoring.control.auth import authorized, control_token
from tuneloop.monitoring.control.loop import consider_retrain
from tuneloop.monitoring.policy import DRIFT_ALERT

if TYPE_CHECKING:
    from tuneloop.platform.registry import Registry

MAX_ALERT_BODY_BYTES = 1 << 20
"""Largest webhook body taken: Alertmanager's batches of a few hundred alerts fit many times over."""


class Alert(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str = Field(pattern="^(firing|resolved)$", description="Alertmanager: firing or resolved.")
    labels: dict[str, str] = Field(description="alertname, alias, ...")


class AlertBatch(BaseModel):
    model_config = ConfigDict(extra="allow")

    alerts: list[Alert] = Field(min_length=1, description="Alertmanager webhook alerts.")


def _error(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class _TooLarge(Exception):
    pass


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The request body, or `_TooLarge` as soon as it passes `limit` bytes (never read whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(registry: Registry, *, token: str | None = None) -> FastAPI:
    """The control API; `token`: the bearer token /v1/alerts requires (default: auth.control_token();
    empty refuses every call)."""
    app = FastAPI(title="tuneloop control", docs_url=None, redoc_url=None, openapi_url=None)
    required = control_token() if token is None else token

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/alerts", response_model=None)
    async def alerts(request: Request) -> JSONResponse | dict[str, Any]:
        if not authorized(request.headers.get("authorization"), required):
            return _error(
                401,
                "the control API needs `Authorization: Bearer <token>` (TUNELOOP_CONTROL_TOKEN or the "
                "file TUNELOOP_CONTROL_TOKEN_FILE names; Alertmanager: http_config.authorization)",
                code="invalid_token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            raw = await _bounded_body(request, MAX_ALERT_BODY_BYTES)
        except _TooLarge:
            return _error(413, f"webhook body over {MAX_ALERT_BODY_BYTES} bytes", code="request_too_large")
        try:
            batch = AlertBatch.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return _error(400, f"not an Alertmanager webhook body: {where}: {first['msg']}")
        return await run_in_threadpool(_record, registry, batch)

    return app


def _record(registry: Registry, batch: AlertBatch) -> dict[str, Any]:
    """Record each alert of a known alias and ask the policy (blocking: runs in a worker thread)."""
    known = registry.aliases()
    recorded, ignored, due = 0, 0, []
    for alert in batch.alerts:
        alias = alert.labels.get("alias", "")
        if alias not in known:
            ignored += 1
            continue
        name = alert.labels.get("alertname", "")
        detail = {"alias": alias, "status": alert.status, "alertname": name, "labels": alert.labels}
        registry.add_event(
            registry.adapter_of(alias), DRIFT_ALERT, f"{name} {alert.status} for {alias}", detail
        )
        recorded += 1
        if alert.status == "firing" and consider_retrain(registry, alias).retrain:
            due.append(alias)
    return {"recorded": recorded, "ignored": ignored, "retrain_due": sorted(set(due))}
