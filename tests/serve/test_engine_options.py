"""Engine options for GPU users and the request checks that go with them, without starting an engine:
the flags `tuneloop serve` gives vLLM for each setting, user flags that would clash refused, the
served name, tools refused without a tool-call parser, and `max_completion_tokens` on completions.

The same settings against a real engine: tests/serve/test_gateway.py (served name, tools,
max_completion_tokens); the Helm side: tests/helm/test_chart_engine.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.platform.errors import ConfigError
from tuneloop.serve.chat_completions.protocol import ChatCompletionRequest
from tuneloop.serve.completions.protocol import CompletionRequest
from tuneloop.serve.config import GatewayConfig, resolve_base
from tuneloop.serve.engine.launch import EngineConfig, engine_argv
from tuneloop.serve.errors import OpenAIError
from tuneloop.serve.protocol import engine_body, parse_body


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_gpu_options_become_vllm_flags() -> None:
    cpu = engine_argv(EngineConfig(model="m", port=1))
    assert flag(cpu, "--kv-cache-memory-bytes") == str(128 * 2**20)
    assert "--gpu-memory-utilization" not in cpu and "--tensor-parallel-size" not in cpu
    assert "--enable-auto-tool-choice" not in cpu

    gpu = engine_argv(
        EngineConfig(
            model="m", port=1, tensor_parallel_size=2, gpu_memory_fraction=0.8, tool_call_parser="hermes"
        )
    )
    assert flag(gpu, "--tensor-parallel-size") == "2" and flag(gpu, "--gpu-memory-utilization") == "0.8"
    assert "--kv-cache-memory-bytes" not in gpu  # vLLM sizes the cache from the fraction
    assert "--enable-auto-tool-choice" in gpu and flag(gpu, "--tool-call-parser") == "hermes"


@pytest.fixture
def serve_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    monkeypatch.setenv("TUNELOOP_ENGINE_PORT", "1")  # nothing listens on port 1
    for name in ("TUNELOOP_DB_URL", "TUNELOOP_ARTIFACTS", "TUNELOOP_PROMPT_EMBEDS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_settings_reach_the_engine_and_clashing_flags_are_refused(
    tiny_model_dir: Path, serve_env: pytest.MonkeyPatch
) -> None:
    serve_env.setenv("TUNELOOP_ENGINE_TENSOR_PARALLEL_SIZE", "2")
    serve_env.setenv("TUNELOOP_ENGINE_GPU_MEMORY_FRACTION", "0.9")
    serve_env.setenv("TUNELOOP_MAX_LORA_RANK", "64")
    serve_env.setenv("TUNELOOP_ENGINE_LORA_RANK", "64")  # fixed by hand (else: from the registry's versions)
    serve_env.setenv("TUNELOOP_ENGINE_MAX_MODEL_LEN", "4096")
    serve_env.setenv("TUNELOOP_TOOL_CALL_PARSER", "llama3_json")
    serve_env.setenv("TUNELOOP_ENGINE_EXTRA_ARGS", "--enforce-eager --max-num-batched-tokens 8192")
    argv = engine_argv(GatewayConfig.from_settings(str(tiny_model_dir)).engine)
    assert flag(argv, "--tensor-parallel-size") == "2" and flag(argv, "--gpu-memory-utilization") == "0.9"
    assert flag(argv, "--max-lora-rank") == "64" and flag(argv, "--max-model-len") == "4096"
    assert flag(argv, "--tool-call-parser") == "llama3_json"
    assert argv[-3:] == ["--enforce-eager", "--max-num-batched-tokens", "8192"]

    for clash, setting in (
        ("--port 9", "TUNELOOP_ENGINE_PORT"),
        ("--max-lora-rank=128", "TUNELOOP_ENGINE_LORA_RANK"),
        ("-tp 4", "TUNELOOP_ENGINE_TENSOR_PARALLEL_SIZE"),
        ("--served-model-name x", "TUNELOOP_SERVED_MODEL_NAME"),
    ):
        serve_env.setenv("TUNELOOP_ENGINE_EXTRA_ARGS", clash)
        with pytest.raises(ConfigError, match=f"TUNELOOP_ENGINE_EXTRA_ARGS: .* use {setting}"):
            GatewayConfig.from_settings(str(tiny_model_dir))
    serve_env.setenv("TUNELOOP_ENGINE_EXTRA_ARGS", "")
    serve_env.setenv("TUNELOOP_ENGINE_GPU_MEMORY_FRACTION", "1.5")
    with pytest.raises(ConfigError, match=r"TUNELOOP_ENGINE_GPU_MEMORY_FRACTION='1\.5'"):
        GatewayConfig.from_settings(str(tiny_model_dir))


def test_a_served_name_renames_the_base_and_the_given_name_keeps_working(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    base = resolve_base(str(tiny_model_dir), tmp_path, "tiny-base")
    assert base.public == "tiny-base" and base.engine == str(tiny_model_dir)
    assert {"tiny-base", str(tiny_model_dir)} <= base.names()
    assert resolve_base(str(tiny_model_dir), tmp_path).public == str(tiny_model_dir)


def chat(extra: str) -> ChatCompletionRequest:
    raw = '{"model": "m", "messages": [{"role": "user", "content": "hi"}]' + extra + "}"
    return parse_body(raw.encode(), ChatCompletionRequest)


TOOLS = ', "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]'


def test_tools_without_a_parser_are_a_400_naming_the_setting() -> None:
    with pytest.raises(OpenAIError) as caught:
        chat(TOOLS).check_tools("")
    error = caught.value
    assert error.status == 400 and error.param == "tools" and "TUNELOOP_TOOL_CALL_PARSER" in error.message
    chat(TOOLS).check_tools("hermes")  # a parser: the engine calls tools
    chat(TOOLS + ', "tool_choice": "none"').check_tools("")  # text asked for: any engine answers
    chat("").check_tools("")


def test_max_completion_tokens_on_completions_is_sent_as_max_tokens() -> None:
    parsed = parse_body(b'{"model": "m", "prompt": "a", "max_completion_tokens": 7}', CompletionRequest)
    body = engine_body(parsed, "engine-model")
    assert body["max_tokens"] == 7 and "max_completion_tokens" not in body
    same = parse_body(
        b'{"model": "m", "prompt": "a", "max_tokens": 7, "max_completion_tokens": 7}', CompletionRequest
    )
    assert engine_body(same, "e")["max_tokens"] == 7
    with pytest.raises(OpenAIError) as caught:
        parse_body(
            b'{"model": "m", "prompt": "a", "max_tokens": 5, "max_completion_tokens": 7}', CompletionRequest
        )
    assert caught.value.status == 400 and "max_completion_tokens (7)" in caught.value.message
