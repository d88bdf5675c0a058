"""`tuneloop serve`: one replica — a vLLM engine subprocess and the OpenAI-compatible gateway in front.

Imported by the CLI's parser, so it imports nothing heavy at module level; the gateway itself never
imports vllm or torch (the engine is a subprocess).
"""

from __future__ import annotations


def serve(*, model: str, host: str | None = None, port: int | None = None) -> None:
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
    """
    import logging
    import os
    import threading
    import time
    from types import FrameType

    import uvicorn

    from tuneloop.platform import settings
    from tuneloop.platform.errors import ConfigError, TuneloopError
    from tuneloop.serve.app import create_app
    from tuneloop.serve.config import GatewayConfig, port_in_use

    bind = settings.bind_host(host)
    chosen_port = port if port is not None else settings.TUNELOOP_PORT.get()
    config = GatewayConfig.from_settings(model)
    if port_in_use(chosen_port, "127.0.0.1" if bind in ("localhost", "0.0.0.0") else bind):
        raise ConfigError(f"port {chosen_port} is in use; pick another with --port")
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    log = logging.getLogger(__name__)

    class Server(uvicorn.Server):
        """uvicorn's server with a hard deadline on stopping, so SIGTERM always ends the replica."""

        deadline_armed = False

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if not self.deadline_armed:
                self.deadline_armed = True
                threading.Thread(
                    target=_exit_after, args=(config.shutdown_grace + 30.0,), daemon=True
                ).start()

    def _exit_after(seconds: float) -> None:
        time.sleep(seconds)
        # Something hung the orderly stop: leave now; the engine's guard stops it when we are gone.
        log.error("the gateway did not stop within %.0f s of the signal; exiting", seconds)
        os._exit(1)

    app = create_app(config, on_fatal=on_fatal)
    server = Server(
        uvicorn.Config(
            app,
            host=bind,
            port=chosen_port,
            log_level=logging.getLevelName(logging.getLogger().level).lower(),
            access_log=False,
            timeout_graceful_shutdown=max(1, round(config.shutdown_grace)),
            lifespan="on",
        )
    )
    log.info("gateway on http://%s:%d/v1 for %s (engine on %s)", bind, chosen_port, model, config.engine.url)
    server.run()
    if fatal:
        raise TuneloopError(f"the engine for {model} could not start: {fatal[0]}")
