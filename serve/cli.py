"""`tuneloop serve`: one replica — a vLLM engine subprocess and the OpenAI-compatible gateway in front.

Imported by the CLI's parser, so it imports nothing heavy at module level; the gateway itself never
imports vllm or torch (the engine is a subprocess).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneloop.serve.config import GatewayConfig


def serve(
    *,
    model: str,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    in_engine: bool | None = None,
) -> None:
    """Serve a base model and its adapters through one OpenAI-compatible endpoint.

    Starts a vLLM engine (LoRA and prompt embeddings enabled, loopback, TUNELOOP_ENGINE_PORT) and
    the gateway in front of it, which follows the registry: promoted versions are loaded, then their
    aliases switched; sampled requests are captured for feedback and drift detection. Stop with
    Ctrl-C or SIGTERM: it stops accepting connections, lets requests in flight finish for up to
    TUNELOOP_SHUTDOWN_GRACE_S, stops the engine and flushes the capture writer; if that takes 30 s
    more than the grace period, it exits anyway (the engine dies with it). The engine never
    outlives the gateway, even one killed with SIGKILL.

    Args:
        model: A model folder, a pulled model name, or ADAPTER@N of a full/partial fine-tune.
        host: Address to bind (default: TUNELOOP_HOST, loopback; others need TUNELOOP_ALLOW_REMOTE_BIND=1).
        port: Port of the gateway (default: TUNELOOP_PORT).
        workers: Gateway processes sharing the port and the one engine (default: TUNELOOP_WORKERS, 1).
        in_engine: Run the gateway inside the engine's server: no second process or socket per token
            (default: TUNELOOP_IN_ENGINE, off). One worker; nothing answers while the engine restarts.
    """
    import logging

    from tuneloop.platform import settings
    from tuneloop.platform.errors import ConfigError

    count = workers if workers is not None else settings.TUNELOOP_WORKERS.get()
    if not 1 <= count <= 64:
        raise ConfigError(f"--workers {count}: give 1 to 64 (TUNELOOP_WORKERS)")
    hosted = in_engine if in_engine is not None else settings.TUNELOOP_IN_ENGINE.get()
    if hosted and count > 1:
        raise ConfigError("--in-engine serves from the engine's one process: leave --workers at 1")
    bind = settings.bind_host(host)
    chosen_port = port if port is not None else settings.TUNELOOP_PORT.get()
    log = logging.getLogger(__name__)
    if hosted:
        from tuneloop.serve.hosted import run_in_engine

        run_in_engine(_config(model, bind, chosen_port), host=bind, port=chosen_port)
        return
    if count == 1:
        _serve_one(model, bind, chosen_port)
        return
    from tuneloop.serve.workers import metrics_dir, run_workers

    # Exported before anything imports prometheus_client, so this process (the engine's
    # supervisor) and every worker write their metrics where each worker's /metrics reads them.
    with (
        metrics_dir(settings.TUNELOOP_HOME.get() / "run") as folder,
        settings.exported_env({"PROMETHEUS_MULTIPROC_DIR": str(folder)}),
    ):
        config = _config(model, bind, chosen_port)
        log.info("gateway for %s on %d workers (engine on %s)", model, count, config.engine.url)
        run_workers(config, host=bind, port=chosen_port, workers=count)


def _config(model: str, bind: str, port: int) -> GatewayConfig:
    from tuneloop.platform.errors import ConfigError
    from tuneloop.serve.config import GatewayConfig, port_in_use

    config = GatewayConfig.from_settings(model)
    if port_in_use(port, "127.0.0.1" if bind in ("localhost", "0.0.0.0") else bind):
        raise ConfigError(f"port {port} is in use; pick another with --port")
    return config


def _serve_one(model: str, bind: str, port: int) -> None:
    import logging

    from tuneloop.platform.errors import TuneloopError
    from tuneloop.serve.app import create_app
    from tuneloop.serve.server import make_server

    config = _config(model, bind, port)
    fatal: list[str] = []
    server = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    server = make_server(
        create_app(config, on_fatal=on_fatal),
        host=bind,
        port=port,
        grace_s=config.shutdown_grace,
        keep_alive_s=config.keep_alive,
    )
    logging.getLogger(__name__).info(
        "gateway on http://%s:%d/v1 for %s (engine on %s)", bind, port, model, config.engine.url
    )
    server.run()
    if fatal:
        raise TuneloopError(f"the engine for {model} could not start: {fatal[0]}")
