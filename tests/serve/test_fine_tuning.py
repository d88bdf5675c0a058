"""The OpenAI fine-tuning API end to end, with the official openai SDK, through a real Ray head.

One replica (`tuneloop serve` with its vLLM engine) serves the tiny model and submits fine-tuning
jobs to the session's loopback Ray head, where `tuneloop train` runs them (Ray Train, the tiny model,
a few steps). Keys: `alice` and `bob` hold the `fine-tuning` scope (TUNELOOP_FINE_TUNING=scoped),
`plain` does not, `admin` sees everything. Each key may have one job active (the 429).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
from helpers.gateway import Replica, start_gateway
from helpers.servers import RayHead
from helpers.tickets import ticket_chats
from helpers.tiny_model import build_random_lora
from openai import OpenAI

from tuneloop.platform.adapters import import_adapter
from tuneloop.platform.apikeys import FINE_TUNING_SCOPE, create_key
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.registry import Registry, finetuning
from tuneloop.platform.registry.tables import FineTuningJob

pytestmark = pytest.mark.slow
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def replica(
    tiny_model_dir: Path, ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replica]:
    home = tmp_path_factory.mktemp("ft-home")
    registry = Registry(f"sqlite:///{home / 'registry.db'}")
    store = ArtifactStore(str(home / "artifacts"))
    lora = build_random_lora(tiny_model_dir, tmp_path_factory.mktemp("ft-adapters") / "bot", rank=8)
    import_adapter("bot", lora, registry=registry, store=store, max_lora_rank=16)
    keys = {
        "alice": create_key(registry, scopes=[FINE_TUNING_SCOPE], admin=False).secret,
        "bob": create_key(registry, scopes=[FINE_TUNING_SCOPE], admin=False).secret,
        "plain": create_key(registry, scopes=["bot"], admin=False).secret,
        "admin": create_key(registry, scopes=[], admin=True).secret,
    }
    env = {
        "TUNELOOP_RAY_ADDRESS": ray_head.address,
        "RAY_AUTH_TOKEN_PATH": ray_head.env["RAY_AUTH_TOKEN_PATH"],
        "TUNELOOP_FINE_TUNING": "scoped",
        "TUNELOOP_FINE_TUNING_MAX_ACTIVE": "1",
        "TUNELOOP_CAPTURE_ENABLED": "0",
    }
    with start_gateway(str(tiny_model_dir), home, extra_env=env) as gateway:
        yield Replica(gateway, str(tiny_model_dir), keys, registry, set(gateway.engine_pids()))


def upload(client: OpenAI, data: bytes, name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, data), purpose="fine-tune").id


def follow(client: OpenAI, job_id: str, until: set[str], timeout: float = 300) -> tuple[Any, list[str]]:
    """Poll the job until its status is in `until`; returns the job and every status seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if not seen or seen[-1] != job.status:
            seen.append(job.status)
        if job.status in until or time.monotonic() > deadline:
            return job, seen
        time.sleep(0.5)


def error_of(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value


def test_upload_train_follow_and_chat_with_the_result_at_once(replica: Replica) -> None:
    alice = replica.client("alice")
    data = ticket_chats(48)
    file = alice.files.create(file=("tickets.jsonl", data), purpose="fine-tune")
    assert (file.object, file.purpose, file.bytes, file.filename) == (
        "file",
        "fine-tune",
        len(data),
        "tickets.jsonl",
    )
    assert alice.files.retrieve(file.id).id == file.id
    assert file.id in [f.id for f in alice.files.list()]
    assert alice.files.content(file.id).content == data

    job = alice.fine_tuning.jobs.create(
        model=replica.base,
        training_file=file.id,
        suffix="support",
        hyperparameters={"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 10.0},
        seed=7,
        metadata={"team": "care"},
        extra_body={"tuneloop": {"max_steps": 8, "eval_every": 4, "max_length": 64}},
    )
    assert job.status in {"validating_files", "queued", "running"}, job
    assert (job.seed, job.metadata, job.suffix) == (7, {"team": "care"}, "support")
    assert job.hyperparameters.n_epochs == 1 and job.method.type == "supervised"
    done, seen = follow(alice, job.id, TERMINAL)
    events = alice.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert done.status == "succeeded", (seen, done.error, [e.message for e in events][:10])
    assert "running" in seen or "validating_files" in seen or "queued" in seen, seen

    model = done.fine_tuned_model
    assert model.startswith("support-") and model.endswith("@1"), model
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at
    version = replica.registry.get_version(model)
    assert version.status == "candidate" and model not in replica.registry.aliases().values()

    # Chat with the result at once, with the key that created it.
    answer = alice.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Ticket 3: my parcel issue, which team?"}],
        max_tokens=4,
    )
    assert answer.model == model and answer.choices[0].message.content is not None

    # Events: newest first, creation to publication, validations with their metrics.
    messages = [e.message for e in events]
    assert messages[-1].startswith(f"Created fine-tuning job {job.id}") and "candidate" in messages[0]
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and all({"step", "train_loss", "valid_loss"} <= set(e.data) for e in metrics)
    assert [e.data["step"] for e in metrics] == [8.0, 4.0]
    page = alice.fine_tuning.jobs.list_events(job.id, limit=2)
    assert page.has_more and len(page.data) == 2
    nxt = alice.fine_tuning.jobs.list_events(job.id, limit=2, after=page.data[-1].id)
    assert nxt.data[0].id == events[2].id

    # Checkpoints: one per validation; the published one names the callable version.
    checkpoints = alice.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [8, 4]
    assert [c.fine_tuned_model_checkpoint for c in checkpoints].count(model) == 1
    assert all("valid_loss" in c.metrics.model_dump() for c in checkpoints)

    # The metrics CSV is a result file of the job, readable by its key.
    (result,) = done.result_files
    csv = alice.files.content(result).text.splitlines()
    assert csv[0] == "step,train_loss,valid_loss" and [row.split(",")[0] for row in csv[1:]] == ["4", "8"]

    # Another key: the same 404 as for what does not exist, everywhere; an admin sees it all.
    bob = replica.client("bob")
    for call in (
        lambda: bob.fine_tuning.jobs.retrieve(job.id),
        lambda: bob.fine_tuning.jobs.list_events(job.id),
        lambda: bob.fine_tuning.jobs.checkpoints.list(job.id),
        lambda: bob.fine_tuning.jobs.cancel(job.id),
    ):
        mine, missing = error_of(call), error_of(lambda: bob.fine_tuning.jobs.retrieve("ftjob-" + "0" * 24))
        assert mine.status_code == missing.status_code == 404 and mine.body["code"] == "job_not_found"
    for call in (
        lambda: bob.files.retrieve(file.id),
        lambda: bob.files.content(file.id),
        lambda: bob.files.delete(result),
    ):
        assert error_of(call).status_code == 404
    assert job.id not in [j.id for j in bob.fine_tuning.jobs.list()]
    chat = error_of(
        lambda: bob.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    )
    assert chat.status_code == 404 and chat.body["code"] == "model_not_found"
    trained_on_bobs = error_of(lambda: bob.fine_tuning.jobs.create(model=replica.base, training_file=file.id))
    assert trained_on_bobs.status_code == 404 and trained_on_bobs.body["param"] == "training_file"
    admin = replica.client("admin")
    assert admin.fine_tuning.jobs.retrieve(job.id).fine_tuned_model == model
    assert job.id in [j.id for j in admin.fine_tuning.jobs.list()]

    assert alice.files.delete(file.id).deleted
    assert error_of(lambda: alice.files.retrieve(file.id)).status_code == 404


def test_a_bad_line_is_a_400_naming_it_and_bad_requests_name_their_param(replica: Replica) -> None:
    bob = replica.client("bob")
    lines = ticket_chats(4).decode().splitlines()
    lines[2] = '{"messages": [{"role": "user", "content": "no answer"}]}'
    bad = error_of(lambda: upload(bob, ("\n".join(lines) + "\n").encode(), "bad.jsonl"))
    assert bad.status_code == 400 and bad.body["param"] == "file"
    assert "bad.jsonl:3:" in bad.body["message"] and "tuneloop-upload" not in bad.body["message"]
    assert bob.files.list().data == []  # nothing stored

    file_id = upload(bob, ticket_chats(40))
    cases = {
        "method.type": dict(method={"type": "dpo", "dpo": {}}),
        "hyperparameters.n_epochs": dict(hyperparameters={"n_epochs": 0}),
        "tuneloop.bogus": dict(extra_body={"tuneloop": {"bogus": 1}}),
        "suffix": dict(suffix="Bad Suffix!"),
    }
    for param, extra in cases.items():
        error = error_of(
            lambda extra=extra: bob.fine_tuning.jobs.create(
                model=replica.base, training_file=file_id, **extra
            )
        )
        assert (error.status_code, error.body["param"]) == (400, param), error.body
    refused = error_of(
        lambda: bob.fine_tuning.jobs.create(
            model=replica.base, training_file=file_id, method={"type": "reinforcement"}
        )
    )
    assert "supported: supervised" in refused.body["message"]
    model = error_of(lambda: bob.fine_tuning.jobs.create(model="no-such-base", training_file=file_id))
    assert (model.status_code, model.body["param"]) == (404, "model")
    missing = error_of(lambda: bob.fine_tuning.jobs.create(model=replica.base, training_file="file-nope"))
    assert (missing.status_code, missing.body["param"]) == (404, "training_file")
    plain = error_of(lambda: replica.client("plain").files.list())
    assert plain.status_code == 403 and plain.body["code"] == "fine_tuning_not_allowed"


def test_too_few_examples_fail_in_validation_cancel_the_429_and_newest_first(replica: Replica) -> None:
    bob = replica.client("bob")
    few = bob.fine_tuning.jobs.create(model=replica.base, training_file=upload(bob, ticket_chats(3)))
    assert few.status == "failed" and few.error.code == "invalid_training_file", few
    assert few.error.param == "training_file" and "at least" in few.error.message

    file_id = upload(bob, ticket_chats(40))
    long = bob.fine_tuning.jobs.create(
        model=replica.base, training_file=file_id, extra_body={"tuneloop": {"max_steps": 100000}}
    )
    # One active job per key here: a second one is a 429 in OpenAI's shape; another key is not affected.
    limited = error_of(lambda: bob.fine_tuning.jobs.create(model=replica.base, training_file=file_id))
    assert limited.status_code == 429 and limited.body["code"] == "too_many_active_jobs"
    assert limited.body["type"] == "rate_limit_error" and "Traceback" not in limited.body["message"]

    follow(bob, long.id, {"running", *TERMINAL}, timeout=120)
    cancelled = bob.fine_tuning.jobs.cancel(long.id)
    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
    assert bob.fine_tuning.jobs.retrieve(long.id).status == "cancelled"

    page = bob.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [long.id] and page.has_more
    rest = bob.fine_tuning.jobs.list(limit=10, after=long.id)
    assert [j.id for j in rest.data] == [few.id] and not rest.has_more


def test_a_job_ray_no_longer_knows_ends_failed_not_running(replica: Replica) -> None:
    """What a Ray head restart leaves: a job open in the registry that the head has never heard of."""
    registry = replica.registry
    key_id = next(k.id for k in registry.api_keys() if k.prefix == replica.keys["bob"][:10])
    registry.add_job("tuneloop-lost-20261204-000000-abcd", "lost-abc", {"output": {"adapter": "lost-abc"}})
    request = {"training_file": "file-x", "seed": 1, "hyperparameters": {}}
    row = FineTuningJob(
        id="ftjob-lost",
        key_id=key_id,
        job_id="tuneloop-lost-20261204-000000-abcd",
        adapter_name="lost-abc",
        model=replica.base,
        request=request,
    )
    finetuning.add_ft_job(registry, row)
    job = replica.client("bob").fine_tuning.jobs.retrieve("ftjob-lost")
    assert job.status == "failed" and "no longer knows this job" in job.error.message
    assert registry.get_job("tuneloop-lost-20261204-000000-abcd").status == "failed"

    # A gateway that stopped while submitting leaves a job with no Ray job: failed after a while.
    stale = FineTuningJob(
        id="ftjob-stale",
        key_id=key_id,
        adapter_name="stale-abc",
        model=replica.base,
        request=request,
        created_at=datetime.now(UTC) - timedelta(minutes=20),
    )
    finetuning.add_ft_job(registry, stale)
    job = replica.client("bob").fine_tuning.jobs.retrieve("ftjob-stale")
    assert job.status == "failed" and "stopped before it reached Ray" in job.error.message
