"""Everything one serving replica is configured with, gathered once from settings and `--model`.

`--model` may name a model folder, a model pulled with `tuneloop models pull`, or a stored full or
partial fine-tune as `adapter@N` (manifest `serving == "engine"`): that version is fetched from the
artifact store into the local cache and served as the engine's base model. It cannot be an adapter
(LoRA, prompt tuning, ...): those are served on their base model's replica.

The engine takes prompt embeddings (prompt-tuned and P-tuned versions) unless TUNELOOP_PROMPT_EMBEDS
is off; with them on, its LoRA is restricted to TUNELOOP_LORA_TARGET_MODULES (see
serve/prompt_embeds/engine.py for why).
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.platform import settings
from tuneloop.platform.adapters import engine_lora_targets
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.basemodels import local_model_dir, resolve_model
from tuneloop.platform.errors import ConfigError, NotFoundError
from tuneloop.platform.refs import VersionRef
from tuneloop.serve.engine.launch import EngineConfig, check_extra_args
from tuneloop.serve.engine.lora_limits import LoraLimits
from tuneloop.serve.engine.pidfile import reclaim_port
from tuneloop.serve.prompt_embeds.engine import prompt_embeds_engine_args
from tuneloop.serve.request.limits import RequestLimits
from tuneloop.serve.routing.resolver import BaseModel


@dataclass(frozen=True)
class CaptureConfig:
    """Capture of sampled traffic for evaluation, drift detection and feedback (monitoring/capture)."""

    enabled: bool
    sample_rate: float = 1.0
    db_url: str = ""
    redact: str = "none"
    """`module:function` applied to prompts and answers before they are stored, or `none`."""

    @classmethod
    def from_settings(cls) -> CaptureConfig:
        """Read the TUNELOOP_CAPTURE_* settings; a redaction hook that cannot load stops start-up."""
        from tuneloop.monitoring.capture.redact import load_redactor

        redact = settings.TUNELOOP_CAPTURE_REDACT.get()
        load_redactor(redact)  # raises ConfigError naming the hook, before any engine starts
        return cls(
            enabled=settings.TUNELOOP_CAPTURE_ENABLED.get(),
            sample_rate=settings.TUNELOOP_CAPTURE_SAMPLE_RATE.get(),
            db_url=settings.TUNELOOP_CAPTURE_DB_URL.get(),
            redact=redact,
        )


@dataclass(frozen=True)
class GatewayConfig:
    """One replica: its base model, its engine, where state lives, and its limits."""

    base: BaseModel
    engine: EngineConfig
    db_url: str
    artifacts: str
    cache_dir: Path
    log_dir: Path
    max_in_flight: int
    max_resident: int
    poll_interval: float
    metrics_public: bool
    engine_start_timeout: float
    lora_target_modules: tuple[str, ...] | None = None
    """The engine's `--lora-target-modules`; None when prompt-embeddings serving is off (unrestricted)."""
    capture: CaptureConfig = field(default_factory=lambda: CaptureConfig(enabled=False))
    limits: RequestLimits = field(default_factory=RequestLimits)
    """What one request may ask for (body size, prompts, sequences): serve/request/limits.py."""
    shutdown_grace: float = 10.0
    """Seconds requests in flight may take to finish after SIGTERM (TUNELOOP_SHUTDOWN_GRACE_S)."""
    keep_alive: float = 75.0
    """Seconds an idle client connection stays open (TUNELOOP_KEEP_ALIVE_S)."""
    auth_negative_cache: int = 10_000
    """Unknown key hashes remembered between snapshots (TUNELOOP_AUTH_NEGATIVE_CACHE)."""
    auth_lookups: int = 2
    """Registry lookups of keys at once (TUNELOOP_AUTH_LOOKUPS)."""
    run_dir: Path | None = None
    """Where the engine's pid file goes (TUNELOOP_HOME/run); None writes none."""
    workers: int = 1
    """Gateway worker processes sharing the port and the engine (TUNELOOP_WORKERS, `--workers`)."""
    engine_owner: int | None = None
    """In a worker: the pid of the parent process that runs the engine (the worker only watches it)."""

    @property
    def prompt_embeds(self) -> bool:
        """Whether prompt-tuned and P-tuned versions are served (the engine takes prompt embeddings)."""
        return self.lora_target_modules is not None

    @classmethod
    def from_settings(cls, model: str) -> GatewayConfig:
        """Resolve `--model` (fetching a stored fine-tune if it names one) and read every setting."""
        cache_dir = settings.TUNELOOP_CACHE_DIR.get()
        base = resolve_base(model, cache_dir / "models", settings.TUNELOOP_SERVED_MODEL_NAME.get())
        engine_port = settings.TUNELOOP_ENGINE_PORT.get()
        run_dir = settings.TUNELOOP_HOME.get() / "run"
        if port_in_use(engine_port):
            # Reclaimed only from an engine a replica of this home left behind; otherwise refused.
            reclaim_port(engine_port, run_dir, port_in_use)
        targets = engine_lora_targets()
        try:
            extra_args = prompt_embeds_engine_args(targets) if targets is not None else []
        except ValueError as exc:  # e.g. embed_tokens, which breaks batches mixing LoRA and embeddings
            raise ConfigError(
                f"TUNELOOP_LORA_TARGET_MODULES: {exc}; or set TUNELOOP_PROMPT_EMBEDS=0"
            ) from None
        limits = engine_lora_limits(base)
        user_args = settings.TUNELOOP_ENGINE_EXTRA_ARGS.get()
        check_extra_args(user_args)
        engine = EngineConfig(
            model=base.engine,
            port=engine_port,
            max_lora_rank=limits.max_rank,
            max_loras=limits.max_loras,
            max_cpu_loras=limits.max_cpu_loras,
            kv_cache_bytes=settings.TUNELOOP_ENGINE_KV_CACHE_BYTES.get(),
            max_model_len=settings.TUNELOOP_ENGINE_MAX_MODEL_LEN.get(),
            dtype=settings.TUNELOOP_ENGINE_DTYPE.get(),
            tensor_parallel_size=settings.TUNELOOP_ENGINE_TENSOR_PARALLEL_SIZE.get(),
            gpu_memory_fraction=settings.TUNELOOP_ENGINE_GPU_MEMORY_FRACTION.get(),
            tool_call_parser=settings.TUNELOOP_TOOL_CALL_PARSER.get(),
            extra_args=[*extra_args, *user_args],
        )
        return cls(
            base=base,
            engine=engine,
            db_url=settings.TUNELOOP_DB_URL.get(),
            artifacts=settings.TUNELOOP_ARTIFACTS.get(),
            cache_dir=cache_dir,
            log_dir=settings.TUNELOOP_HOME.get() / "logs",
            max_in_flight=_positive("TUNELOOP_MAX_IN_FLIGHT", settings.TUNELOOP_MAX_IN_FLIGHT.get()),
            max_resident=_positive(
                "TUNELOOP_MAX_RESIDENT_ADAPTERS", settings.TUNELOOP_MAX_RESIDENT_ADAPTERS.get()
            ),
            poll_interval=max(0.05, settings.TUNELOOP_REGISTRY_POLL_S.get()),
            metrics_public=settings.TUNELOOP_METRICS_PUBLIC.get(),
            engine_start_timeout=settings.TUNELOOP_ENGINE_START_TIMEOUT_S.get(),
            lora_target_modules=targets,
            capture=CaptureConfig.from_settings(),
            limits=RequestLimits.from_settings(),
            shutdown_grace=max(0.0, settings.TUNELOOP_SHUTDOWN_GRACE_S.get()),
            keep_alive=max(1.0, settings.TUNELOOP_KEEP_ALIVE_S.get()),
            auth_negative_cache=settings.TUNELOOP_AUTH_NEGATIVE_CACHE.get(),
            auth_lookups=settings.TUNELOOP_AUTH_LOOKUPS.get(),
            run_dir=run_dir,
        )


def engine_lora_limits(base: BaseModel) -> LoraLimits:
    """The engine's LoRA rank, adapters per batch and CPU cache, from the registry (lora_limits.py)."""
    import logging

    from tuneloop.platform.registry import Registry
    from tuneloop.serve.engine.lora_limits import derive_limits

    ceiling = settings.TUNELOOP_MAX_LORA_RANK.get()
    resident = _positive("TUNELOOP_MAX_RESIDENT_ADAPTERS", settings.TUNELOOP_MAX_RESIDENT_ADAPTERS.get())
    fixed_rank, fixed_loras = (
        settings.TUNELOOP_ENGINE_LORA_RANK.get(),
        settings.TUNELOOP_ENGINE_MAX_LORAS.get(),
    )
    if fixed_rank < 0 or fixed_loras < 0:
        raise ConfigError(
            "TUNELOOP_ENGINE_LORA_RANK and TUNELOOP_ENGINE_MAX_LORAS must be 0 (derive) or more"
        )
    defaults = EngineConfig(model=base.engine, port=0)
    try:
        limits = derive_limits(
            Registry(),
            ArtifactStore(),
            tuple(sorted(base.names())),
            ceiling_rank=ceiling,
            max_resident=resident,
            max_num_seqs=defaults.max_num_seqs,
            fixed_rank=fixed_rank,
            fixed_max_loras=fixed_loras,
        )
    except Exception as exc:  # an unreachable registry must not keep the engine from starting
        logging.getLogger(__name__).warning("cannot derive LoRA limits from the registry (%s): defaults", exc)
        return LoraLimits(ceiling, fixed_loras or defaults.max_loras, max(resident, defaults.max_loras), 0)
    logging.getLogger(__name__).info(
        "engine LoRA limits from %d stored versions: rank %d, %d adapters per batch, %d cached on CPU",
        limits.versions,
        limits.max_rank,
        limits.max_loras,
        limits.max_cpu_loras,
    )
    return limits


def resolve_base(model: str, models_cache: Path, served_name: str = "") -> BaseModel:
    """The base model `--model` names: a folder, a pulled name, a Hugging Face id, or a stored
    full/partial fine-tune (ADAPTER@N). Clients call it by the name as given, or by `served_name`
    when one is given (TUNELOOP_SERVED_MODEL_NAME; the name as given keeps working)."""
    base = _resolve_base(model, models_cache)
    if served_name and served_name != model:
        return dataclasses.replace(base, public=served_name, given=model)
    return base


def _resolve_base(model: str, models_cache: Path) -> BaseModel:
    folder = local_model_dir(model)
    if folder is not None:
        return BaseModel(public=model, engine=str(folder))
    if VersionRef.parse(model) is None:
        try:
            return BaseModel(public=model, engine=str(resolve_model(model)))
        except NotFoundError as exc:
            raise NotFoundError(f"--model: {exc}, nor a stored version ADAPTER@N") from None
    from tuneloop.platform.promotion import serving_of
    from tuneloop.platform.registry import Registry
    from tuneloop.serve.engine.cache import local_copy

    store = ArtifactStore()
    version = Registry().get_version(model)
    serving = serving_of(version, store)
    if serving != "engine":
        raise ConfigError(
            f"{version.ref} is a {version.method} version (served as {serving}), not a full or partial "
            f"fine-tune: serve its base model (`tuneloop serve --model {version.adapter.base_model}`) "
            "and call it by alias or as ADAPTER@N"
        )
    path = local_copy(store, version.adapter.name, version.number, models_cache)
    return BaseModel(public=model, engine=str(path), version=version.ref)


def port_in_use(port: int, host: str = settings.LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) == 0


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{name}={value} must be at least 1")
    return value
