"""Fine-tuning benchmark: seconds from `jobs.create` to the first answer of the fine-tuned model.

    .venv/bin/python bench/fine_tune.py                   # the tiny test model (built in seconds)
    .venv/bin/python bench/fine_tune.py --model smollm2   # SmolLM2-135M (`tuneloop models pull smollm2-135m`)

One run starts a loopback Ray head and one replica exactly as users run them (`tuneloop ray up`'s
recipe, `tuneloop serve`) under a scratch TUNELOOP_HOME, uploads 48 chat examples with the openai SDK
and measures, side by side, the same small LoRA job (8 steps, validation every 4):

(a) api: `fine_tuning.jobs.create` -> polling `jobs.retrieve` (every 0.25 s) until `succeeded` -> the
    first chat completion of `fine_tuned_model`, with the creating (non-admin) key.
(b) cli: the path without the API: `submit_spec` (what `tuneloop jobs submit` runs) of the same spec ->
    `JobsClient.wait` until the Ray job ends -> the first chat completion of the version, admin key.

The ratio (a)/(b) is what the API adds around the same Ray job. A script, not a test: everything it
starts is stopped by process group at the end. The 1-minute load average is printed beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test builders: tiny model, gateway launcher, Ray head

from helpers.gateway import start_gateway  # noqa: E402
from helpers.servers import start_ray_head  # noqa: E402
from helpers.tickets import ticket_chats  # noqa: E402
from helpers.tiny_model import bench_model_dir  # noqa: E402
from openai import OpenAI  # noqa: E402

from tuneloop.platform.apikeys import FINE_TUNING_SCOPE, create_key  # noqa: E402
from tuneloop.platform.registry import Registry  # noqa: E402

OPTIONS = {"max_steps": 8, "eval_every": 4, "max_length": 64}


def first_answer(client: OpenAI, model: str) -> None:
    client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Ticket 1: my password issue, which team?"}],
        max_tokens=4,
    )


def via_api(client: OpenAI, base: str, file_id: str) -> dict[str, float]:
    started = time.monotonic()
    job = client.fine_tuning.jobs.create(
        model=base,
        training_file=file_id,
        seed=7,
        hyperparameters={"batch_size": 4},
        extra_body={"tuneloop": OPTIONS},
    )
    created = time.monotonic()
    while job.status not in {"succeeded", "failed", "cancelled"}:
        time.sleep(0.25)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded":
        sys.exit(f"bench: the job {job.id} ended {job.status}: {job.error}")
    succeeded = time.monotonic()
    first_answer(client, job.fine_tuned_model)
    answered = time.monotonic()
    return {
        "create_s": created - started,
        "train_s": succeeded - created,
        "answer_s": answered - succeeded,
        "total_s": answered - started,
    }


def via_cli(client: OpenAI, model_dir: Path, data: Path) -> dict[str, float]:
    from tuneloop.platform.ray.client import JobsClient
    from tuneloop.platform.ray.submit import submit_spec

    spec = {
        "base_model": str(model_dir),
        "method": {"name": "lora"},
        "data": {"train": data.name, "seed": 7, "max_length": OPTIONS["max_length"]},
        "hyperparameters": {
            "batch_size": 4,
            "seed": 7,
            "max_steps": OPTIONS["max_steps"],
            "eval_every": OPTIONS["eval_every"],
        },
        "output": {"adapter": "cli-bench"},
    }
    path = data.parent / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    started = time.monotonic()
    job_id = submit_spec(path)
    status = JobsClient().wait(job_id, interval=0.25)
    if status != "SUCCEEDED":
        sys.exit(f"bench: the Ray job {job_id} ended {status}")
    succeeded = time.monotonic()
    first_answer(client, "cli-bench@1")
    answered = time.monotonic()
    return {"train_s": succeeded - started, "answer_s": answered - succeeded, "total_s": answered - started}


def run(model: str, scratch: Path) -> dict[str, Any]:
    model_dir = bench_model_dir(model, scratch)
    home = scratch / "home"
    registry = Registry(f"sqlite:///{home / 'registry.db'}")
    user = create_key(registry, scopes=[FINE_TUNING_SCOPE], admin=False).secret
    admin = create_key(registry, scopes=[], admin=True).secret
    data = scratch / "cli" / "tickets.jsonl"
    data.parent.mkdir()
    data.write_bytes(ticket_chats(48))
    context = "512" if model == "tiny" else "2048"
    with start_ray_head(scratch / "ray-logs") as head:
        ray_env = {
            "TUNELOOP_RAY_ADDRESS": head.address,
            "RAY_AUTH_TOKEN_PATH": head.env["RAY_AUTH_TOKEN_PATH"],
        }
        env = {
            **ray_env,
            "TUNELOOP_ENGINE_MAX_MODEL_LEN": context,
            "TUNELOOP_ENGINE_KV_CACHE_BYTES": str(256 * 2**20),  # as bench/serve.py: enough for SmolLM2
            "TUNELOOP_CAPTURE_ENABLED": "0",
        }
        with start_gateway(str(model_dir), home, extra_env=env) as gateway:
            client = OpenAI(base_url=gateway.base_url, api_key=user, max_retries=0, timeout=120)
            file_id = client.files.create(file=("tickets.jsonl", data.read_bytes()), purpose="fine-tune").id
            api = via_api(client, str(model_dir), file_id)
            os.environ.update(
                {**ray_env, "TUNELOOP_HOME": str(home), "TUNELOOP_DB_URL": "", "TUNELOOP_ARTIFACTS": ""}
            )
            admin_client = OpenAI(base_url=gateway.base_url, api_key=admin, max_retries=0, timeout=120)
            cli = via_cli(admin_client, model_dir, data)
    return {
        "model": model,
        "api": api,
        "cli": cli,
        "ratio": api["total_s"] / cli["total_s"],
        "load_1m": os.getloadavg()[0],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-ft-") as tmp:
        result = run(args.model, Path(tmp))
    api, cli = result["api"], result["cli"]
    print(f"model {args.model}, load average (1 min) {load:.1f} before, {result['load_1m']:.1f} after")
    print(
        f"(a) api: jobs.create -> first answer {api['total_s']:.1f} s "
        f"(create {api['create_s']:.2f} s, to succeeded {api['train_s']:.1f} s, "
        f"first answer {api['answer_s']:.2f} s)"
    )
    print(
        f"(b) cli: submit_spec -> first answer {cli['total_s']:.1f} s "
        f"(to SUCCEEDED {cli['train_s']:.1f} s, first answer {cli['answer_s']:.2f} s)"
    )
    print(f"ratio api/cli: {result['ratio']:.2f}")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
