"""The chart's engine options: gpusPerReplica > 1 turns tensor parallelism on, and the engine values
(GPU memory fraction, served name, tool-call parser, extra flags) reach the gateway as the settings
`tuneloop serve` reads, which tests/serve/test_engine_options.py turns into the engine's flags."""

from __future__ import annotations

import shlex

import pytest
from helpers.helm import HELM, NO_HELM, Renderer, env_of, one

pytestmark = pytest.mark.skipif(HELM is None, reason=NO_HELM)


def gateway_env(renderer: Renderer, values: dict[str, object]) -> dict[str, object]:
    deployment = one(renderer.docs(values), "Deployment", "-serving")
    (gateway,) = deployment["spec"]["template"]["spec"]["containers"]
    return {**env_of(gateway), "_gpus": gateway["resources"].get("limits", {}).get("nvidia.com/gpu")}


def test_more_than_one_gpu_per_replica_turns_tensor_parallelism_on(renderer: Renderer) -> None:
    four = gateway_env(renderer, {"serving": {"gpusPerReplica": 4}})
    assert four["TUNELOOP_ENGINE_TENSOR_PARALLEL_SIZE"] == "4" and four["_gpus"] == 4
    one_gpu = gateway_env(renderer, {})
    assert "TUNELOOP_ENGINE_TENSOR_PARALLEL_SIZE" not in one_gpu and one_gpu["_gpus"] == 1
    cpu = gateway_env(renderer, {"gpu": {"enabled": False}, "serving": {"gpusPerReplica": 4}})
    assert "TUNELOOP_ENGINE_TENSOR_PARALLEL_SIZE" not in cpu and cpu["_gpus"] is None


def test_engine_values_become_the_serving_settings(renderer: Renderer) -> None:
    flags = ["--enforce-eager", "--override-generation-config", '{"note": "it\'s"}']
    env = gateway_env(
        renderer,
        {
            "serving": {
                "engine": {
                    "gpuMemoryFraction": 0.85,
                    "servedModelName": "smollm",
                    "toolCallParser": "hermes",
                    "extraArgs": flags,
                }
            }
        },
    )
    assert env["TUNELOOP_ENGINE_GPU_MEMORY_FRACTION"] == "0.85"
    assert env["TUNELOOP_SERVED_MODEL_NAME"] == "smollm"
    assert env["TUNELOOP_TOOL_CALL_PARSER"] == "hermes"
    assert shlex.split(str(env["TUNELOOP_ENGINE_EXTRA_ARGS"])) == flags
    default = gateway_env(renderer, {})
    assert not {
        "TUNELOOP_TOOL_CALL_PARSER",
        "TUNELOOP_ENGINE_EXTRA_ARGS",
        "TUNELOOP_SERVED_MODEL_NAME",
    } & set(default)


def test_a_bad_memory_fraction_is_refused_naming_the_key(renderer: Renderer) -> None:
    result = renderer.result({"serving": {"engine": {"gpuMemoryFraction": 1.5}}})
    assert result.returncode != 0 and "gpuMemoryFraction" in result.stderr
