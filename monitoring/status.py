"""`tuneloop status`: one overview of a deployment, from the registry and three health checks.

Per alias: the version it serves, its newest evaluation (suite, scores, when), its newest drift
decision (detector, decision, when) and the retrains still open. Then whether the gateway
(TUNELOOP_GATEWAY_URL/health), the control process (TUNELOOP_CONTROL_URL/health) and the Ray Jobs
API (TUNELOOP_RAY_ADDRESS) answer, each within a couple of seconds: a stopped service is reported,
never waited for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuneloop.platform import settings
from tuneloop.platform.output import iso, print_json

if TYPE_CHECKING:
    from tuneloop.platform.registry import Registry

CHECK_TIMEOUT_S = 3.0


def alias_overview(registry: Registry, alias: str, live: str) -> dict[str, Any]:
    """What one alias serves, how it last scored, what drift last said, which retrains are open."""
    from tuneloop.monitoring.policy import DRIFT_CHECKED
    from tuneloop.monitoring.retrain import open_retrains

    evaluation: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    for event in registry.history(registry.adapter_of(alias)):
        detail = event.detail or {}
        if event.kind == "evaluation" and event.message.startswith(f"{live} on "):
            scores = {k: v for k, v in detail.items() if isinstance(v, float)}
            suite = event.message.removeprefix(f"{live} on ")
            evaluation = {"suite": suite, "scores": scores, "time": iso(event.created_at)}
        elif event.kind == DRIFT_CHECKED and detail.get("alias") == alias:
            drift = {
                "detector": detail.get("detector"),
                "decision": detail.get("decision"),
                "score": detail.get("score"),
                "time": iso(event.created_at),
            }
    retrains = [str(d["job_id"]) for d in open_retrains(registry, alias)]
    return {"alias": alias, "live": live, "evaluation": evaluation, "drift": drift, "open_retrains": retrains}


def _http_ok(url: str) -> tuple[bool, str]:
    import httpx

    try:
        response = httpx.get(url, timeout=CHECK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__}"
    return response.status_code == 200, f"{url}: HTTP {response.status_code}"


def _ray_ok(address: str | None) -> tuple[bool, str]:
    from tuneloop.platform.errors import TuneloopError
    from tuneloop.platform.ray.client import JobsClient

    try:
        client = JobsClient(address, timeout=CHECK_TIMEOUT_S)
        running = sum(job.status.value == "RUNNING" for job in client.list())
    except TuneloopError as exc:
        return False, str(exc).splitlines()[0]
    return True, f"{client.address}: {running} job(s) running"


def services(gateway: str | None, control: str | None, address: str | None) -> dict[str, dict[str, Any]]:
    """Whether the gateway, the control process and Ray answer, with what each said."""
    found = {
        "gateway": _http_ok((gateway or settings.TUNELOOP_GATEWAY_URL.get()).rstrip("/") + "/health"),
        "control": _http_ok((control or settings.TUNELOOP_CONTROL_URL.get()).rstrip("/") + "/health"),
        "ray": _ray_ok(address),
    }
    return {name: {"up": up, "detail": settings.redact_url(detail)} for name, (up, detail) in found.items()}


def status(
    gateway: str | None = None, control: str | None = None, address: str | None = None, json: bool = False
) -> int:
    """One overview: each alias's live version, last evaluation, last drift decision and open
    retrains, and whether the gateway, the control process and Ray answer.

    Args:
        gateway: Gateway URL (default: TUNELOOP_GATEWAY_URL).
        control: Control API URL (default: TUNELOOP_CONTROL_URL).
        address: Ray dashboard / Jobs API URL (default: TUNELOOP_RAY_ADDRESS).
        json: Print one JSON object ({"aliases": [...], "services": {...}}) instead of text.
    """
    from tuneloop.platform.registry import Registry

    registry = Registry()
    aliases = [alias_overview(registry, a, ref) for a, ref in sorted(registry.aliases().items())]
    found = services(gateway, control, address)
    if json:
        print_json({"aliases": aliases, "services": found})
        return 0
    print(f"{'ALIAS':<20} {'LIVE':<24} {'LAST EVALUATION':<34} {'LAST DRIFT CHECK':<30} OPEN RETRAINS")
    for row in aliases:
        print(
            f"{row['alias']:<20} {row['live']:<24} {_evaluation(row['evaluation']):<34} "
            f"{_drift(row['drift']):<30} {','.join(row['open_retrains']) or '-'}"
        )
    if not aliases:
        print("no aliases yet (`tuneloop adapters promote`)")
    for name, state in found.items():
        print(f"{name + ':':<9} {'up' if state['up'] else 'DOWN':<5} {state['detail']}")
    return 0


def _evaluation(found: dict[str, Any] | None) -> str:
    if not found:
        return "never"
    score = next(iter(sorted(found["scores"].items())), None)
    shown = f"{score[0]} {score[1]:.3f}" if score else "no score"
    return f"{shown} ({found['suite']}, {found['time'][:10]})"


def _drift(found: dict[str, Any] | None) -> str:
    if not found:
        return "never"
    return f"{found['decision']} ({found['detector']}, {found['time'][:10]})"
