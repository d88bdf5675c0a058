"""`tuneloop control`: the control API and, unless TUNELOOP_SCHEDULER is off, the monitoring scheduler."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def control(host: str | None = None, port: int = 8080) -> int:
    """Run the control API (/health, /metrics, POST /v1/alerts) and the monitoring scheduler.

    POST /v1/alerts needs `Authorization: Bearer` with TUNELOOP_CONTROL_TOKEN, or the token in
    TUNELOOP_CONTROL_TOKEN_FILE (created with a random token when neither exists). The scheduler
    evaluates and checks drift for every alias each TUNELOOP_SCHEDULER_INTERVAL_S; set
    TUNELOOP_SCHEDULER=off where Kubernetes CronJobs run `tuneloop eval run` instead.

    Args:
        host: Address to bind (default: TUNELOOP_HOST, loopback; others need TUNELOOP_ALLOW_REMOTE_BIND).
        port: Port of the control API.
    """
    import uvicorn

    from tuneloop.monitoring.capture import CaptureStore
    from tuneloop.monitoring.control.app import create_app
    from tuneloop.monitoring.control.auth import control_token
    from tuneloop.monitoring.control.loop import Scheduler
    from tuneloop.platform import settings
    from tuneloop.platform.registry import Registry

    bind = settings.bind_host(host)
    token = control_token(create=True)  # before anything starts: a bad token file fails at once
    registry = Registry()
    scheduler = None
    log.info("control API on http://%s:%d (/health, /metrics, POST /v1/alerts)", bind, port)
    if settings.TUNELOOP_SCHEDULER.get():
        interval = settings.TUNELOOP_SCHEDULER_INTERVAL_S.get()
        log.info(
            "scheduler: a round every %gs (drift checks, retrains, gate); evaluation every %gs per alias",
            interval,
            settings.TUNELOOP_EVAL_INTERVAL_S.get(),
        )
        scheduler = Scheduler(registry, CaptureStore(), interval)
        scheduler.start()
    else:
        log.info("scheduler off (TUNELOOP_SCHEDULER): evaluation runs elsewhere")
    try:
        uvicorn.run(create_app(registry, token=token), host=bind, port=port, log_level="warning")
    finally:
        if scheduler is not None:
            scheduler.stop()
    return 0
