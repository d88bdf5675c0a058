"""The whole loop on the tiny model: drift injected -> a retraining job on real Ray -> the gate ->
promotion -> the gateway serves the new version.

Everything is real: the first version is trained by a job submitted through the Ray Jobs API, served
by `tuneloop serve` (vLLM + gateway), called with the official openai client; users' feedback goes
through POST /v1/feedback into the capture store; the monitoring round (monitoring/control/loop.py)
runs exactly as the scheduler runs it. The task is one a tiny model learns in a few steps: every
question about an animal's colour is answered `red`. The concept drift: from some point on, the right
answer is `blue`, which the users' corrections say.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from helpers.gateway import Gateway, start_gateway
from helpers.servers import RayHead
from openai import OpenAI

from tuneloop.monitoring.capture import CaptureStore
from tuneloop.monitoring.control.loop import run_round
from tuneloop.monitoring.retrain import RETRAIN_FINISHED
from tuneloop.platform.apikeys import create_key
from tuneloop.platform.jobs import submit_spec
from tuneloop.platform.rayjobs import JobsClient
from tuneloop.platform.registry import Registry
from tuneloop.serve.proxy import VERSION_HEADER

pytestmark = pytest.mark.slow
ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "pig", "hen", "ant", "bat", "elk", "yak"]
WINDOW = 30  # feedback labels per side of the concept-drift check


def question(i: int) -> str:
    return f"What colour is the {ANIMALS[i % len(ANIMALS)]} number {i}?"


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": question(i)}]


@pytest.fixture
def home(tmp_path: Path, ray_head: RayHead, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's TUNELOOP_HOME, the session's Ray head, and a loop that acts on the first drift."""
    home = tmp_path / "home"
    for name in ("TUNELOOP_DB_URL", "TUNELOOP_ARTIFACTS", "TUNELOOP_CAPTURE_DB_URL", "TUNELOOP_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "TUNELOOP_HOME": str(home),
        "TUNELOOP_RAY_ADDRESS": ray_head.address,
        "RAY_AUTH_TOKEN_PATH": ray_head.env["RAY_AUTH_TOKEN_PATH"],
        "TUNELOOP_RETRAIN_SUSTAIN": "1",
        "TUNELOOP_DRIFT_FEEDBACK_WINDOW": str(WINDOW),
        "TUNELOOP_RETRAIN_REPLAY": "0",  # the old answers are wrong now
        "TUNELOOP_RETRAIN_FEEDBACK_LIMIT": str(WINDOW),  # only the corrections after the onset
        "TUNELOOP_EVAL_MAX_TOKENS": "4",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return home


def write_job(folder: Path, model_dir: Path) -> Path:
    folder.mkdir(parents=True)
    rows = [{"messages": [*messages(i), {"role": "assistant", "content": "red"}]} for i in range(48)]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "base_model": str(model_dir),
        "method": {"name": "lora", "rank": 8},
        "data": {"train": "data.jsonl", "max_length": 64},
        "hyperparameters": {"learning_rate": 0.01, "batch_size": 4, "max_steps": 24, "eval_every": 8},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "output": {"adapter": "colours"},
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    return folder / "job.yaml"


def train_and_wait(spec: Path) -> str:
    job_id = submit_spec(spec)
    status = JobsClient().wait(job_id, timeout=600)
    assert status == "SUCCEEDED", JobsClient().logs(job_id)[-4000:]
    return job_id


@pytest.fixture
def serving(home: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """The first version trained through Ray Jobs, promoted, and served; the loop's eval key set."""
    train_and_wait(write_job(home.parent / "job", tiny_model_dir))
    registry = Registry()
    registry.promote("colours", "colours@1")
    admin = create_key(registry, scopes=[], admin=True).secret
    with start_gateway(str(tiny_model_dir), home, extra_env={"TUNELOOP_REGISTRY_POLL_S": "0.25"}) as gateway:
        monkeypatch.setenv("TUNELOOP_EVAL_KEY", admin)
        monkeypatch.setenv("TUNELOOP_GATEWAY_URL", gateway.url)
        yield gateway


def ask(client: OpenAI, i: int) -> tuple[str, str, str]:
    """(request id, the version that answered, answer): the gateway names the version in a header."""
    raw = client.chat.completions.with_raw_response.create(
        model="colours",
        messages=messages(i),
        max_tokens=4,
        temperature=0.0,  # type: ignore[arg-type]
    )
    out = raw.parse()
    return out.id, raw.headers[VERSION_HEADER], out.choices[0].message.content or ""


def ask_and_judge(gateway: Gateway, key: str, questions: range, right: str, lenient: bool) -> list[str]:
    """Users ask; they mark an answer naming `right` correct (if `lenient`) or send `right` as the
    correction. Returns the versions that answered."""
    client = OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    versions = []
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}) as http:
        for i in questions:
            request_id, version, answer = ask(client, i)
            ok = lenient and right in answer.split()
            body = {"request_id": request_id, **({"label": "correct"} if ok else {"corrected_answer": right})}
            http.post("/v1/feedback", json=body).raise_for_status()
            versions.append(version)
    return versions


def test_concept_drift_is_detected_retrained_gated_and_served(serving: Gateway) -> None:
    registry, store = Registry(), CaptureStore()
    key = create_key(registry, scopes=["colours"], admin=False).secret

    # Before the onset: answers are right (the model learnt `red`), a deploy-time reference forms.
    assert set(ask_and_judge(serving, key, range(WINDOW), "red", lenient=True)) == {"colours@1"}
    quiet = run_round(registry, store)[0]
    assert quiet.error is None and quiet.started_job is None
    assert {c.detector: c.decision for c in quiet.checks}["feedback_accuracy"] == "not_enough_data"

    # The onset: the same questions, but the right answer is `blue` now.
    ask_and_judge(serving, key, range(WINDOW, 2 * WINDOW), "blue", lenient=False)
    drifting = run_round(registry, store)[0]
    assert drifting.error is None, drifting.error
    decisions = {c.detector: c.decision for c in drifting.checks}
    # Inputs look the same (48 training prompts are also below the length check's minimum of 100).
    assert decisions["feedback_accuracy"] == "drift" and decisions["prompt_length"] != "drift"
    assert drifting.decision is not None and drifting.decision.retrain
    assert drifting.started_job is not None

    # The retrain runs as a Ray job; the next round after it ends gates and promotes the candidate.
    assert JobsClient().wait(drifting.started_job, timeout=600) == "SUCCEEDED"
    closing = run_round(registry, store)[0]
    assert closing.error is None, closing.error
    [gate] = closing.gated
    assert gate is not None and gate.promote, gate
    assert registry.aliases()["colours"] == "colours@2"
    v2 = registry.get_version("colours@2")
    assert v2.job_id == drifting.started_job and v2.manifest["parent"] == "colours@1"

    # The gateway follows the registry: the alias is now answered by the retrained version, `blue`.
    deadline, client = time.monotonic() + 10, OpenAI(base_url=serving.base_url, api_key=key, max_retries=0)
    while (served := ask(client, 999))[1] != "colours@2" and time.monotonic() < deadline:
        time.sleep(0.25)
    assert served[1] == "colours@2"
    assert "blue" in served[2].split()

    kinds = [e.kind for e in registry.history("colours")]
    for kind in ("drift.checked", "retrain.started", RETRAIN_FINISHED, "gate.decided", "alias.promoted"):
        assert kind in kinds, kinds
    # A retrain is closed only once the gate has decided (a failed gate leaves it open for the next round).
    assert kinds.index("retrain.started") < kinds.index("gate.decided") < kinds.index(RETRAIN_FINISHED)
