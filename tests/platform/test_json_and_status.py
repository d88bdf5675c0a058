"""`--json` on the list commands and `tuneloop status`, through the CLI's `main`, on a real registry.

`status` asks a real control API (uvicorn on a free loopback port) and finds the gateway and Ray
down (free ports nobody listens on): both answers are what a user sees.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.servers import app_in_thread

from tuneloop.monitoring.control import create_app
from tuneloop.monitoring.policy import DRIFT_CHECKED, RETRAIN_FINISHED, RETRAIN_STARTED
from tuneloop.platform.cli import main
from tuneloop.platform.procs import free_port
from tuneloop.platform.registry import Registry
from tuneloop.platform.settings import LOOPBACK


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("TUNELOOP_DB_URL", "TUNELOOP_ARTIFACTS", "TUNELOOP_PROMPT_EMBEDS", "TUNELOOP_MAX_LORA_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNELOOP_MODELS_DIR", str(tmp_path / "models"))
    return tmp_path / "home"


@pytest.fixture
def control_url(home: Path) -> Iterator[str]:
    with app_in_thread(create_app(Registry(), token="t")) as url:
        yield url


def as_json(capsys: pytest.CaptureFixture[str], *args: str) -> object:
    assert main([*args, "--json"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    return json.loads(out.out)


def test_list_commands_print_json(
    home: Path, tiny_lora_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert as_json(capsys, "adapters", "list") == []
    assert as_json(capsys, "eval", "run") == []  # no alias to evaluate: no gateway is asked
    assert main(["adapters", "import", "support", str(tiny_lora_dir)]) == 0
    assert main(["adapters", "import", "support", str(tiny_lora_dir)]) == 0
    assert main(["adapters", "promote", "support", "2"]) == 0
    assert main(["keys", "create", "--scope", "support"]) == 0
    secret = capsys.readouterr().out.splitlines()[-1]

    versions = as_json(capsys, "adapters", "list")
    assert isinstance(versions, list)
    by_ref = {v["version"]: v for v in versions}
    assert set(by_ref) == {"support@1", "support@2"}
    assert by_ref["support@2"]["aliases"] == ["support"] and by_ref["support@2"]["status"] == "live"
    assert by_ref["support@1"]["method"] == "lora" and by_ref["support@1"]["number"] == 1
    assert by_ref["support@1"]["created_at"].endswith("+00:00")

    events = as_json(capsys, "adapters", "history", "support")
    assert isinstance(events, list)
    assert [e["kind"] for e in events].count("version.added") == 2 or len(events) >= 3
    assert all({"time", "kind", "message", "detail"} <= set(e) for e in events)

    keys = as_json(capsys, "keys", "list")
    assert keys == [
        {"prefix": secret[:10], "admin": False, "scopes": ["support"], "created_at": keys[0]["created_at"]}
    ]
    assert secret not in json.dumps(keys)

    models = as_json(capsys, "models", "list")
    assert isinstance(models, list) and models and all(m["pulled"] is False for m in models)


def test_status_shows_each_alias_and_which_services_answer(
    home: Path, tiny_lora_dir: Path, control_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["adapters", "import", "support", str(tiny_lora_dir)]) == 0
    assert main(["adapters", "promote", "support", "1"]) == 0
    registry = Registry()
    registry.add_evaluation("support@1", "golden", {"exact_match": 0.75, "examples": 4})
    check = {"alias": "support", "decision": "drift", "detector": "feedback_accuracy", "score": 3.5}
    registry.add_event("support", DRIFT_CHECKED, "support: drifted", check)
    registry.add_event("support", RETRAIN_STARTED, "r1", {"alias": "support", "job_id": "job-1"})
    registry.add_event("support", RETRAIN_STARTED, "r2", {"alias": "support", "job_id": "job-2"})
    registry.add_event("support", RETRAIN_FINISHED, "r1 done", {"alias": "support", "job_id": "job-1"})
    capsys.readouterr()
    dead = f"http://{LOOPBACK}:{free_port()}"
    args = ("status", "--gateway", dead, "--control", control_url, "--address", dead)

    found = as_json(capsys, *args)
    assert isinstance(found, dict)
    [alias] = found["aliases"]
    assert alias["alias"] == "support" and alias["live"] == "support@1"
    assert alias["evaluation"]["suite"] == "golden" and alias["evaluation"]["scores"] == {"exact_match": 0.75}
    assert alias["drift"]["decision"] == "drift" and alias["drift"]["detector"] == "feedback_accuracy"
    assert alias["open_retrains"] == ["job-2"]
    assert found["services"]["control"]["up"] is True
    assert found["services"]["gateway"]["up"] is False and found["services"]["ray"]["up"] is False

    assert main(list(args)) == 0
    text = capsys.readouterr().out
    assert "support@1" in text and "exact_match 0.750" in text and "drift (feedback_accuracy" in text
    assert "job-2" in text and "control:  up" in text and "gateway:  DOWN" in text
