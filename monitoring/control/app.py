"""The control API: `/health`, `/metrics` (the monitoring metrics) and `POST /v1/alerts`.

`/v1/alerts` takes Alertmanager's webhook body. Every alert that names an alias the registry knows is
recorded as a `drift.alert` event of the alias's adapter (its status, alertname and labels), then
the drift policy is asked about that alias: a firing alert counts as one drift observation, so an
alert alone never bypasses the sustain, cool-down and budget rules. Alerts for unknown aliases, or
without one, are counted as ignored. A body that is not such a payload is a 400.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneloop.monitoring import metrics
from tuneloop.monitoring.control.loop import adapter_of, consider_retrain
from tuneloop.monitoring.policy import DRIFT_ALERT

if TYPE_CHECKING:
    from tuneloop.platform.registry import Registry


class Alert(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str = Field(pattern="^(firing|resolved)$", description="Alertmanager: firing or resolved.")
    labels: dict[str, str] = Field(description="alertname, alias, ...")


class AlertBatch(BaseModel):
    model_config = ConfigDict(extra="allow")

    alerts: list[Alert] = Field(min_length=1, description="Alertmanager webhook alerts.")


def _error(status: int, message: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return JSONResponse(body, status_code=status)


def create_app(registry: Registry) -> FastAPI:
    app = FastAPI(title="tuneloop control", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/alerts", response_model=None)
    async def alerts(request: Request) -> JSONResponse | dict[str, Any]:
        try:
            batch = AlertBatch.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return _error(400, f"not an Alertmanager webhook body: {where}: {first['msg']}")
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
                adapter_of(registry, alias), DRIFT_ALERT, f"{name} {alert.status} for {alias}", detail
            )
            recorded += 1
            if alert.status == "firing" and consider_retrain(registry, alias).retrain:
                due.append(alias)
        return {"recorded": recorded, "ignored": ignored, "retrain_due": sorted(set(due))}

    return app
