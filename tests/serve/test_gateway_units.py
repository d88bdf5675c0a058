"""Small pieces of the gateway checked alone: body parsing, error re-shaping, metric conventions,
and that the gateway process never imports the heavy libraries."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.stored import store_as_is
from prometheus_client import Counter, Gauge, Histogram

from tuneloop.monitoring import metrics
from tuneloop.serve.chat_completions.protocol import ChatCompletionRequest
from tuneloop.serve.completions.protocol import CompletionRequest
from tuneloop.serve.errors import OpenAIError, from_engine
from tuneloop.serve.protocol import engine_body, parse_body

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (b"{", None, "invalid_json"),
        (b"[]", None, "invalid_json"),
        (b'{"prompt": "x"}', "model", "invalid_value"),
        (b'{"model": "m", "prompt": "x", "max_tokens": "5"}', "max_tokens", "invalid_value"),
        (b'{"model": "m", "prompt": "x", "temperature": NaN}', "temperature", "invalid_value"),
        (b'{"model": "m", "prompt": [[1], []]}', "prompt", "invalid_value"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(raw: bytes, param: str | None, code: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        parse_body(raw, CompletionRequest)
    assert caught.value.status == 400 and caught.value.code == code
    if param:
        assert caught.value.param is not None and caught.value.param.startswith(param)


def test_engine_body_keeps_what_the_client_set_and_rewrites_the_model() -> None:
    parsed = parse_body(b'{"model": "bot", "prompt": "x", "ignore_eos": true, "top_k": 3}', CompletionRequest)
    assert engine_body(parsed, "bot@2") == {"model": "bot@2", "prompt": "x", "ignore_eos": True, "top_k": 3}


def test_engine_errors_are_reshaped_with_the_clients_model_name() -> None:
    raw = (
        b'{"error": {"message": "The model `bot@2` ... maximum context length is 512 tokens",'
        b' "type": "BadRequestError", "param": "input_text", "code": 400}}'
    )
    error = from_engine(400, raw, engine_model="bot@2", requested="bot")
    assert error.status == 400 and error.code == "context_length_exceeded" and error.param == "input_text"
    assert "`bot`" in error.message and "bot@2" not in error.message
    assert from_engine(404, b"{}", engine_model="x", requested="y").status == 503
    assert (
        from_engine(500, b"boom", engine_model="x", requested="y").body()["error"]["type"] == "server_error"
    )


def test_metrics_follow_the_conventions() -> None:
    declared = [v for v in vars(metrics).values() if isinstance(v, Counter | Gauge | Histogram)]
    assert len(declared) >= 12
    for metric in declared:
        name = metric._name  # counters are stored without their _total suffix
        assert name.startswith("tuneloop_"), name
        assert metric._documentation, name
        if isinstance(metric, Histogram):
            assert name.endswith("_seconds"), name
    text = "\n".join(f.name for f in metrics.REGISTRY.collect() if f.type == "counter")
    assert all(n.startswith("tuneloop_") for n in text.split())
    # Declared in ONE module: nothing else in the code creates Prometheus metrics.
    pattern = re.compile(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(")
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("serve", "platform", "monitoring", "train")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "metrics.py"
        and "prometheus_client" in (text := path.read_text())
        and pattern.search(text)
    ]
    assert offenders == []


def test_gateway_imports_no_heavy_library() -> None:
    code = (
        "import sys, tuneloop.serve.app, tuneloop.serve.cli, tuneloop.platform.cli;"
        "heavy = [m for m in ('torch', 'vllm', 'transformers', 'ray', 'peft') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT / "tests")


def test_model_argument_resolves_folders_and_stored_full_finetunes(
    tiny_model_dir: Path, tiny_lora_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.platform.adapters import import_adapter
    from tuneloop.platform.artifacts import ArtifactStore
    from tuneloop.platform.errors import ConfigError, NotFoundError
    from tuneloop.platform.registry import Registry
    from tuneloop.serve.config import resolve_base

    for name in ("TUNELOOP_DB_URL", "TUNELOOP_ARTIFACTS", "TUNELOOP_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    registry, store = Registry(), ArtifactStore()
    cache = tmp_path / "cache"
    assert resolve_base(str(tiny_model_dir), cache).engine == str(tiny_model_dir.resolve())
    with pytest.raises(NotFoundError, match="not a model folder"):
        resolve_base("no-such-model", cache)
    store_as_is(
        registry, store, "ft", tiny_model_dir, base_model=str(tiny_model_dir), method="full", serving="engine"
    )
    base = resolve_base("ft@1", cache)
    # Fetched into the cache (checksummed) and served as the engine's own base model.
    assert (base.public, base.version) == ("ft@1", "ft@1")
    assert Path(base.engine) == cache / "ft" / "v1" and (Path(base.engine) / "config.json").is_file()
    assert resolve_base("ft@1", cache).engine == base.engine  # a complete copy is reused
    import_adapter("bot", tiny_lora_dir, registry=registry, store=store, max_lora_rank=16)
    with pytest.raises(ConfigError, match="not a full or partial fine-tune"):
        resolve_base("bot@1", cache)


def test_clients_cannot_send_prompt_embeddings_on_either_endpoint() -> None:
    with pytest.raises(OpenAIError) as refused:
        parse_body(b'{"model": "m", "prompt": "x", "prompt_embeds": "QUJD"}', CompletionRequest)
    assert refused.value.status == 400 and refused.value.param == "prompt_embeds"
    parts = [
        {"type": "prompt_embeds", "data": "QUJD"},
        {"type": "image_embeds", "image_embeds": "x"},
        {"data": "x"},
    ]
    for part in parts:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": [part]}]}).encode()
        with pytest.raises(OpenAIError) as refused:
            parse_body(body, ChatCompletionRequest)
        assert refused.value.status == 400 and str(refused.value.param).startswith("messages.0.content")
    text = {"type": "text", "text": "hi"}
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": [text]}]}).encode()
    assert parse_body(body, ChatCompletionRequest).messages[0].content == [text]


def test_engines_take_prompt_embeddings_by_default_with_lora_on_linear_layers(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.platform import settings
    from tuneloop.platform.errors import ConfigError
    from tuneloop.platform.procs import free_port
    from tuneloop.serve.config import GatewayConfig
    from tuneloop.serve.prompt_embeds import LINEAR_PROJECTIONS

    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    monkeypatch.setenv("TUNELOOP_ENGINE_PORT", str(free_port()))
    for name in ("TUNELOOP_PROMPT_EMBEDS", "TUNELOOP_LORA_TARGET_MODULES", "TUNELOOP_CAPTURE_REDACT"):
        monkeypatch.delenv(name, raising=False)
    assert settings.TUNELOOP_LORA_TARGET_MODULES.get() == LINEAR_PROJECTIONS
    config = GatewayConfig.from_settings(str(tiny_model_dir))
    assert config.prompt_embeds and config.lora_target_modules == LINEAR_PROJECTIONS
    assert list(config.engine.extra_args) == [
        "--enable-prompt-embeds",
        "--lora-target-modules",
        *LINEAR_PROJECTIONS,
    ]
    assert config.capture.enabled and config.capture.redact.endswith(":mask_pii")
    monkeypatch.setenv("TUNELOOP_LORA_TARGET_MODULES", "q_proj,embed_tokens")
    with pytest.raises(ConfigError, match="TUNELOOP_LORA_TARGET_MODULES"):
        GatewayConfig.from_settings(str(tiny_model_dir))
    monkeypatch.setenv("TUNELOOP_PROMPT_EMBEDS", "0")
    off = GatewayConfig.from_settings(str(tiny_model_dir))
    assert not off.prompt_embeds and off.lora_target_modules is None and not off.engine.extra_args
    monkeypatch.setenv("TUNELOOP_CAPTURE_REDACT", "no.such.module:redact")
    with pytest.raises(ConfigError, match=r"no\.such\.module:redact"):
        GatewayConfig.from_settings(str(tiny_model_dir))


def test_error_bodies_never_show_internal_folders_or_store_uris() -> None:
    from tuneloop.serve.errors import hide_internal

    hide_internal("/srv/tuneloop-home", "/srv/tuneloop-home/cache")
    error = OpenAIError(
        500,
        "cannot fetch a@1: /srv/tuneloop-home/cache/adapters/a/v1 missing; s3://bucket/prefix/a/v1 gone",
    )
    message = error.body()["error"]["message"]
    assert "/srv/tuneloop-home" not in message and "s3://" not in message
    assert message == "cannot fetch a@1: <internal>/adapters/a/v1 missing; <store> gone"


def test_completion_posts_skip_the_router_and_fail_in_the_openai_shape(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi import Request
    from fastapi.testclient import TestClient

    from tuneloop.serve import app as app_module
    from tuneloop.serve.completions.api_router import router as completions_router
    from tuneloop.serve.errors import install_handlers

    assert set(app_module.HOT_ROUTES) == {"/v1/completions", "/v1/chat/completions"}

    async def refuse(request: Request) -> None:
        assert request.app is gateway  # endpoints reach the replica through request.app
        raise OpenAIError(429, "slow down", type="rate_limit_error")

    async def crash(_request: Request) -> None:
        raise RuntimeError("/srv/secret/place")

    gateway = app_module.GatewayApp()
    install_handlers(gateway)
    gateway.include_router(completions_router)
    monkeypatch.setattr(app_module, "HOT_ROUTES", {"/v1/completions": refuse, "/v1/chat/completions": crash})
    with TestClient(gateway, raise_server_exceptions=False) as client:
        refused = client.post("/v1/completions", json={})
        assert refused.status_code == 429 and refused.json()["error"]["message"] == "slow down"
        crashed = client.post("/v1/chat/completions", json={})
        assert crashed.status_code == 500 and crashed.json()["error"]["type"] == "server_error"
        assert "secret" not in crashed.text and "/srv/secret/place" in caplog.text  # logged, not shown
        # Other methods still go through the router: its 405, in the same shape.
        wrong = client.get("/v1/completions")
        assert wrong.status_code == 405 and "not allowed" in wrong.json()["error"]["message"]
