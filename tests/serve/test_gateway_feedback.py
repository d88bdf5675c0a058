"""Feedback through the real gateway cannot poison retraining, and a malformed stored adapter is a 400.

One replica (`tuneloop serve` with its vLLM engine) serves the tiny model with `bot@1` (a random
LoRA) and `broken@1`, stored with an adapter_config.json whose rank is not a number. Keys: `bot`
and `teammate`, both scoped to `bot`, and an admin. Capture is on, into a SQLite file the tests
read with the same code the retrain step uses (monitoring/evaluation/feedback.py).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.gateway import Replica, publish_loras, start_gateway
from helpers.stored import store_as_is

from tuneloop.monitoring.capture import CapturedRequest, CaptureStore
from tuneloop.monitoring.evaluation.feedback import judged_with_times, labelled_examples
from tuneloop.platform.apikeys import create_key, hash_key
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.registry import Registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replica(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    published = publish_loras(tiny_model_dir, tmp_path_factory, "feedback", seeds=(1,))
    home, work, registry, store = published.home, published.work, published.registry, published.store
    lora = work / "bot1"
    registry.promote("bot", "bot@1")
    _store_malformed(registry, store, tiny_model_dir, lora, work / "broken")
    keys = {
        "bot": create_key(registry, scopes=["bot"], admin=False).secret,
        "teammate": create_key(registry, scopes=["bot"], admin=False).secret,
        "admin": create_key(registry, scopes=[], admin=True).secret,
    }
    env = {
        "TUNELOOP_CAPTURE_ENABLED": "1",
        "TUNELOOP_CAPTURE_SAMPLE_RATE": "1",
        "TUNELOOP_CAPTURE_DB_URL": f"sqlite:///{home / 'capture.db'}",
        "TUNELOOP_CAPTURE_REDACT": "",  # the default masker
    }
    with start_gateway(str(tiny_model_dir), home, extra_env=env) as gateway:
        yield Replica(gateway, str(tiny_model_dir), keys, registry, set(gateway.engine_pids()))


def _store_malformed(registry: Registry, store: ArtifactStore, base: Path, lora: Path, dest: Path) -> None:
    """A LoRA version whose adapter_config.json says `"r": "eight"` (an import would refuse it)."""
    shutil.copytree(lora, dest)
    config = (dest / "adapter_config.json").read_text()
    (dest / "adapter_config.json").write_text(config.replace('"r": 8', '"r": "eight"'))
    assert '"eight"' in (dest / "adapter_config.json").read_text()
    store_as_is(registry, store, "broken", dest, base_model=str(base), method="lora", serving="lora")


def _ask(replica: Replica, key: str) -> str:
    answer = replica.client(key).completions.create(model="bot", prompt="Hello", max_tokens=4, temperature=0)
    return answer.id


def _captured(store: CaptureStore, request_id: str) -> CapturedRequest:
    deadline = time.monotonic() + 15
    while (found := store.get(request_id)) is None:
        assert time.monotonic() < deadline, f"{request_id} was never captured"
        time.sleep(0.05)
    return found


def _feedback(replica: Replica, key: str, **body: Any) -> tuple[int, dict[str, Any]]:
    response = replica.post("/v1/feedback", body, key=key)
    assert "Traceback" not in response.text
    return response.status_code, response.json()


def test_only_the_requester_or_an_admin_may_judge_a_request(
    replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture = CaptureStore(replica.gateway.env["TUNELOOP_CAPTURE_DB_URL"])
    key_ids = {
        name: replica.registry.find_api_key(hash_key(secret)).id for name, secret in replica.keys.items()
    }  # type: ignore[union-attr]
    request_id = _ask(replica, "bot")
    assert _captured(capture, request_id).key_id == key_ids["bot"]

    # A teammate with the same scope gets exactly what an unknown id gets.
    denied = _feedback(replica, "teammate", request_id=request_id, corrected_answer="poison")
    unknown = _feedback(replica, "teammate", request_id="cmpl-" + "0" * 32, corrected_answer="poison")
    assert denied[0] == unknown[0] == 404
    assert denied[1]["error"]["code"] == unknown[1]["error"]["code"] == "request_not_found"
    assert capture.with_feedback("bot") == []

    # The requester may, and a later feedback replaces the earlier; corrected answers are redacted.
    status, first = _feedback(replica, "bot", request_id=request_id, label="wrong")
    assert status == 201
    status, second = _feedback(
        replica, "bot", request_id=request_id, corrected_answer="Write to help@example.com or call 5551234"
    )
    assert status == 201 and second["corrected_answer"] == "Write to <email> or call <number>"
    ((_, stored),) = capture.with_feedback("bot")
    assert (stored.key_id, stored.by_admin, stored.label) == (key_ids["bot"], False, None)
    assert f"fb-{stored.id}" == second["id"] and first["label"] == "wrong"

    # Retraining trusts the requester's feedback by default ...
    monkeypatch.delenv("TUNELOOP_FEEDBACK_TRUST", raising=False)
    assert [e.completion for e in labelled_examples(capture, "bot")] == ["Write to <email> or call <number>"]
    # ... and an admin's replaces it, which counts only where admins are trusted.
    assert _feedback(replica, "admin", request_id=request_id, label="good")[0] == 201
    ((_, stored),) = capture.with_feedback("bot")
    assert (stored.key_id, stored.by_admin) == (key_ids["admin"], True)
    assert labelled_examples(capture, "bot") == [] and judged_with_times(capture, "bot", "bot@1") == []
    monkeypatch.setenv("TUNELOOP_FEEDBACK_TRUST", "requester,admin")
    assert len(labelled_examples(capture, "bot")) == 1 and [
        v for _, v in judged_with_times(capture, "bot", "bot@1")
    ] == [True]

    # No key secret (nor its hash) is in the capture database.
    database = Path(capture.engine.url.database or "")
    raw = b"".join(p.read_bytes() for p in database.parent.glob("capture.db*"))
    for secret in replica.keys.values():
        assert secret.encode() not in raw and hash_key(secret).encode() not in raw
    capture.close()


def test_a_malformed_stored_adapter_config_is_a_400_naming_it(replica: Replica) -> None:
    for _ in range(2):  # the second time too: nothing half-loaded is left behind
        response = replica.post(
            "/v1/completions", {"model": "broken@1", "prompt": "Hello", "max_tokens": 2}, key="admin"
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "model_not_servable" and error["param"] == "model"
        assert "malformed adapter config" in error["message"] and "'eight'" in error["message"]
    assert replica.client("bot").completions.create(model="bot", prompt="Hi", max_tokens=2).choices
