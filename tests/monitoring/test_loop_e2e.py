"""The whole loop, as deployed: `tuneloop control` runs as its own process and fixes a partial concept
drift on live traffic by itself.

The task is ticket routing on the tiny model: templated tickets ("Ticket 7: my parcel issue, which
team?") go to one of four teams by their subject, and live traffic repeats the same tickets, the
held-out test tickets included. Then a re-organisation moves one subject in four to a new team
(`parcel` tickets go to `logistics` now): a quarter of the right answers change while the inputs look
exactly the same. Users say so only through feedback.

Everything is real: the first version is trained by a job submitted through the Ray Jobs API, served by
`tuneloop serve` (vLLM + gateway), called with the official openai client; feedback goes through
POST /v1/feedback; the control process runs the scheduler on its own and is only watched through the
registry it writes. The test sees: no drift while answers are as good as at promotion; detection after
the onset; a retrain that does not fail; a gate decision; the promotion; and the accuracy recovered on
the new policy without loss on the tickets whose team did not change.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from helpers.gateway import Gateway, start_gateway
from helpers.servers import RayHead
from openai import OpenAI

from tuneloop.platform.apikeys import create_key
from tuneloop.platform.procs import ManagedProcess, free_port
from tuneloop.platform.ray.client import JobsClient
from tuneloop.platform.ray.submit import submit_spec
from tuneloop.platform.registry import Registry
from tuneloop.platform.registry.tables import Event
from tuneloop.platform.settings import LOOPBACK, child_env
from tuneloop.serve.request.proxy import VERSION_HEADER

pytestmark = pytest.mark.slow
TUNELOOP = str(Path(__import__("sys").executable).parent / "tuneloop")
BEFORE = {"invoice": "billing", "password": "access", "crash": "engineering", "parcel": "shipping"}
AFTER = {**BEFORE, "parcel": "logistics"}  # the re-organisation: one subject in four moves
TICKETS = [(subject, n) for subject in BEFORE for n in range(20)]


def question(subject: str, n: int) -> str:
    return f"Ticket {n}: my {subject} issue, which team?"


@pytest.fixture
def home(tmp_path: Path, ray_head: RayHead, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    for name in ("TUNELOOP_DB_URL", "TUNELOOP_ARTIFACTS", "TUNELOOP_CAPTURE_DB_URL", "TUNELOOP_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TUNELOOP_HOME", str(home))
    monkeypatch.setenv("TUNELOOP_RAY_ADDRESS", ray_head.address)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", ray_head.env["RAY_AUTH_TOKEN_PATH"])
    return home


def write_job(folder: Path, model_dir: Path) -> Path:
    folder.mkdir(parents=True)
    rows = [
        {
            "messages": [
                {"role": "user", "content": question(s, n)},
                {"role": "assistant", "content": BEFORE[s]},
            ]
        }
        for s, n in TICKETS
    ]
    (folder / "tickets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "base_model": str(model_dir),
        "method": {"name": "lora", "rank": 8},
        # 24 held-out test tickets: the accuracy measured at promotion, and the gate's unchanged set.
        "data": {"train": "tickets.jsonl", "max_length": 64, "split": [0.6, 0.1, 0.3]},
        "hyperparameters": {"learning_rate": 0.005, "batch_size": 4, "max_steps": 160, "eval_every": 40},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "output": {"adapter": "tickets"},
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    return folder / "job.yaml"


@pytest.fixture
def serving(home: Path, tiny_model_dir: Path) -> Iterator[tuple[Gateway, str]]:
    """tickets@1 trained through Ray Jobs, promoted by hand and served; yields (gateway, admin key)."""
    job_id = submit_spec(write_job(home.parent / "job", tiny_model_dir))
    assert JobsClient().wait(job_id, timeout=600) == "SUCCEEDED", JobsClient().logs(job_id)[-4000:]
    registry = Registry()
    registry.promote("tickets", "tickets@1")
    admin = create_key(registry, scopes=[], admin=True).secret
    with start_gateway(str(tiny_model_dir), home, extra_env={"TUNELOOP_REGISTRY_POLL_S": "0.25"}) as gateway:
        yield gateway, admin


@pytest.fixture
def control(serving: tuple[Gateway, str], home: Path) -> Iterator[ManagedProcess]:
    """`tuneloop control` as a process, with settings for a fast loop on a small model."""
    gateway, admin = serving
    port = free_port()
    env = child_env(
        {
            "TUNELOOP_EVAL_KEY": admin,
            "TUNELOOP_GATEWAY_URL": gateway.url,
            "TUNELOOP_SCHEDULER_INTERVAL_S": "3",
            "TUNELOOP_RETRAIN_SUSTAIN": "2",
            "TUNELOOP_RETRAIN_COOLDOWN_S": "30",
            "TUNELOOP_EVAL_MAX_TOKENS": "16",
        }
    )
    process = ManagedProcess(
        [TUNELOOP, "control", "--port", str(port)],
        log_path=home / "control.log",
        health_url=f"http://{LOOPBACK}:{port}/health",
        env=env,
        name="tuneloop-control",
        ready_timeout=120,
    )
    with process:
        yield process


def traffic(gateway: Gateway, key: str, truth: dict[str, str], seed: int) -> dict[str, list[bool]]:
    """Every ticket once, in a shuffled order, through the alias; users confirm a right answer and
    correct a wrong one. Returns right/wrong per subject (the answering version must be one)."""
    client = OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=60)
    tickets = list(TICKETS)
    random.Random(seed).shuffle(tickets)
    right: dict[str, list[bool]] = {s: [] for s in truth}
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        for subject, n in tickets:
            raw = client.chat.completions.with_raw_response.create(
                model="tickets",
                messages=[{"role": "user", "content": question(subject, n)}],
                max_tokens=16,
                temperature=0.0,
            )
            out = raw.parse()
            answer = (out.choices[0].message.content or "").strip()
            ok = answer == truth[subject]
            body = {
                "request_id": out.id,
                **({"label": "correct"} if ok else {"corrected_answer": truth[subject]}),
            }
            http.post("/v1/feedback", json=body).raise_for_status()
            right[subject].append(ok)
    return right


def accuracy(right: dict[str, list[bool]], subjects: Callable[[str], bool]) -> float:
    picked = [ok for s, oks in right.items() if subjects(s) for ok in oks]
    return sum(picked) / len(picked)


def wait_for(
    what: str, found: Callable[[list[Event]], bool], process: ManagedProcess, timeout: float
) -> list[Event]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = Registry().history("tickets")
        if found(events):
            return events
        assert process.health_url and httpx.get(process.health_url, timeout=10).status_code == 200
        time.sleep(2)
    lines = "\n".join(f"{e.kind}: {e.message}" for e in Registry().history("tickets")[-25:])
    raise AssertionError(f"no {what} within {timeout:.0f}s; last events:\n{lines}\n{process.log_tail()}")


def test_control_fixes_a_partial_concept_drift_on_repeated_tickets(
    serving: tuple[Gateway, str], control: ManagedProcess
) -> None:
    gateway, _ = serving
    key = create_key(Registry(), scopes=["tickets"], admin=False).secret
    changed, unchanged = (lambda s: BEFORE[s] != AFTER[s]), (lambda s: BEFORE[s] == AFTER[s])

    before = traffic(gateway, key, BEFORE, seed=1)
    old_accuracy = accuracy(before, lambda s: True)
    assert old_accuracy >= 0.8, before  # the first version learnt the routing
    time.sleep(8)  # a few rounds see these labels: answers are as good as at promotion
    checks = [e for e in Registry().history("tickets") if e.kind == "drift.checked"]
    feedback = [e.detail for e in checks if (e.detail or {}).get("detector") == "feedback_cusum"]
    assert feedback and all(d["decision"] != "drift" for d in feedback), feedback

    # The re-organisation: the same tickets, and parcels go to logistics now.
    during = traffic(gateway, key, AFTER, seed=2)
    assert accuracy(during, changed) <= 0.2  # the live version still answers `shipping`
    events = wait_for(
        "promotion",
        lambda es: any(e.kind == "alias.promoted" and "tickets@1" not in e.message for e in es),
        control,
        900,
    )
    kinds = [e.kind for e in events]
    assert "retrain.failed" not in kinds, [e.message for e in events if e.kind == "retrain.failed"]
    drift = [e for e in events if e.kind == "drift.checked" and (e.detail or {}).get("decision") == "drift"]
    assert drift and drift[0].detail["detector"] == "feedback_cusum" and drift[0].detail.get("onset")
    # Every retrain trained and registered a candidate (one started before most parcels were labelled
    # again may lose at the gate; the next one, on more labels, wins).
    finished = [e for e in events if e.kind == "retrain.finished"]
    assert finished and all(e.detail["status"] == "SUCCEEDED" and e.detail["candidate"] for e in finished)
    gates = [e for e in events if e.kind == "gate.decided"]
    gate = gates[-1]
    assert gate.detail["action"] == "promote" and gate.detail["live"] == "tickets@1", gate.message
    new = gate.detail["comparisons"]["feedback"]
    assert new["wins"] > new["losses"] and new["p_better"] < 0.05, gate.detail
    assert "unchanged" in gate.detail["comparisons"] and "sign test" in gate.detail["rule"]
    assert kinds.index("retrain.started") < kinds.index("gate.decided") < kinds.index("retrain.finished")
    print("\n".join(f"{e.kind}: {e.message}" for e in events if e.kind != "drift.checked"))

    # The gateway follows the registry; the retrained version answers the new policy and kept the old one.
    client = OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        raw = client.chat.completions.with_raw_response.create(
            model="tickets", messages=[{"role": "user", "content": question("parcel", 3)}], max_tokens=16
        )
        if raw.headers[VERSION_HEADER] == Registry().aliases()["tickets"]:
            break
        time.sleep(0.25)
    after = traffic(gateway, key, AFTER, seed=3)
    new_accuracy = accuracy(after, lambda s: True)
    print(
        f"accuracy before {old_accuracy:.3f}, during {accuracy(during, lambda s: True):.3f}, "
        f"after {new_accuracy:.3f}"
    )
    assert new_accuracy >= 0.95 * old_accuracy, after
    assert accuracy(after, changed) >= 0.8, after
    assert accuracy(after, unchanged) >= accuracy(before, unchanged) - 0.05, (before, after)
