"""The chart's topology run on one machine: two serving replicas and the control plane share one capture
store, so feedback reaches any replica and the drift checks see what every replica served.

Nothing here is written for the test's convenience: the chart is rendered with helm, each pod's
environment is exactly what its container gets (secretKeyRef values resolved from the rendered
Secrets), and the pods' commands run as real processes: the migration hook Job's `tuneloop db upgrade`,
`tuneloop serve` for each serving replica (real vLLM engines on the tiny model), and `tuneloop control`
with its scheduler. Only what a single machine cannot have is rewritten: cluster hosts become
127.0.0.1, ports that would collide become free ports, the pods' folders (TUNELOOP_HOME, /cache, the
shared artifacts volume, mounted Secrets) become temporary folders, and the database URL in the Secret
becomes the test session's real PostgreSQL. Settings a test needs small (the scheduler's interval, the
feedback window, the engine's memory) go in through the chart's own values (`extraEnv`, `engine`).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import yaml
from helpers.gateway import Gateway, start_gateway
from helpers.helm import CHART, RELEASE, helm
from helpers.postgres import PostgresServer
from openai import OpenAI

from tuneloop.monitoring.capture import CaptureStore
from tuneloop.platform.procs import ManagedProcess, free_port
from tuneloop.platform.registry import Registry
from tuneloop.platform.settings import LOOPBACK, child_env

pytestmark = pytest.mark.slow

TUNELOOP = str(Path(sys.executable).with_name("tuneloop"))
CHART_DB_URL = "postgresql+psycopg://tuneloop:s3cret@tuneloop-pg.db.svc.cluster.local:5432/tuneloop"
ALIAS = "support"
WINDOW = 10  # an imported version's reference: its first judged answers (chart value control.extraEnv)
WRONG = 14  # then this many wrong ones: enough for the CUSUM to reach its threshold
Doc = dict[str, Any]


def render(tmp_path: Path, model_dir: Path) -> list[Doc]:
    values = {
        "gpu": {"enabled": False},
        "database": {"url": CHART_DB_URL},
        "artifacts": {"type": "volume"},
        "models": {"pull": {"enabled": False}},
        "serving": {
            "model": str(model_dir),
            "replicaCount": 2,
            "engine": {"kvCacheBytes": 64 * 2**20, "maxModelLen": 512, "dtype": "float32"},
            "extraEnv": [{"name": "TUNELOOP_REGISTRY_POLL_S", "value": "0.25"}],
        },
        "control": {
            "extraEnv": [
                {"name": "TUNELOOP_SCHEDULER_INTERVAL_S", "value": "1"},
                {"name": "TUNELOOP_DRIFT_FEEDBACK_WINDOW", "value": str(WINDOW)},
            ]
        },
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    out = helm("template", RELEASE, CHART, "-n", "tuneloop", "-f", path).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def secrets_of(docs: list[Doc]) -> dict[str, dict[str, str]]:
    out = {}
    for doc in docs:
        if doc["kind"] == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
            out[doc["metadata"]["name"]] = {**data, **(doc.get("stringData") or {})}
    return out


def workload(docs: list[Doc], kind: str, suffix: str) -> Doc:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return found


def container_env(container: Doc, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The environment Kubernetes would give `container`: values, and Secret keys resolved."""
    env = {}
    for var in container.get("env", []):
        name = var["name"]
        if "value" in var:
            env[name] = str(var["value"])
            continue
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        assert ref is not None, f"{name}: only values and secretKeyRefs are expected, got {var}"
        value = secrets.get(ref["name"], {}).get(ref["key"])
        if value is None:
            assert ref.get("optional"), f"{name}: Secret {ref['name']}/{ref['key']} is not rendered"
            continue  # an optional Secret the operator did not create: Kubernetes leaves it unset
        env[name] = value
    return env


class Machine:
    """Maps the cluster onto this machine: hosts to loopback, pod folders to temporary ones."""

    def __init__(self, root: Path, db_url: str, service_ports: dict[int, int]) -> None:
        self.root, self.db_url, self.service_ports = root, db_url, service_ports
        self.shared = {"/artifacts": root / "artifacts-volume"}  # the ReadWriteMany claim

    def pod_env(self, env: dict[str, str], pod: str) -> dict[str, str]:
        folders = {
            **self.shared,
            "/var/lib/tuneloop": self.root / pod / "state",
            "/cache": self.root / pod / "cache",
            "/home/tuneloop": self.root / pod / "home",
            "/var/run/secrets/tuneloop": self.root / pod / "secrets",
        }
        out = {}
        for name, value in env.items():
            if value == CHART_DB_URL:
                value = self.db_url
            elif "://" in value and (host := urlsplit(value).hostname) and not host.startswith("127."):
                parts = urlsplit(value)
                port = self.service_ports.get(parts.port or 80, free_port())  # a free port: nothing there
                value = urlunsplit(parts._replace(netloc=f"{LOOPBACK}:{port}"))
            elif value.startswith("/"):
                for prefix, folder in folders.items():
                    if value == prefix or value.startswith(prefix + "/"):
                        value = str(folder) + value[len(prefix) :]
                        break
            out[name] = value
        if "TUNELOOP_ENGINE_PORT" in out:  # every replica's engine listens on 8100 inside its own pod
            out["TUNELOOP_ENGINE_PORT"] = str(free_port())
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        return out


def run_cli(env: dict[str, str], *args: str) -> str:
    """`kubectl exec`'s equivalent: a tuneloop command with a pod's environment."""
    proc = subprocess.run(
        [TUNELOOP, *args], env=child_env(env), capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, f"tuneloop {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def start_together(stack: ExitStack, managers: list[AbstractContextManager[Gateway]]) -> list[Gateway]:
    """Enter the managers at once (two engines starting in parallel); every one entered is exited."""
    with ThreadPoolExecutor(len(managers)) as pool:
        futures = [pool.submit(m.__enter__) for m in managers]
        results: list[Gateway] = []
        errors = []
        for manager, future in zip(managers, futures, strict=True):
            try:
                results.append(future.result())
                stack.push(manager)
            except Exception as exc:
                errors.append(exc)
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The processes get the pods' environment and nothing of ours that tuneloop or Ray would read.
    import os

    for name in list(os.environ):
        if name.startswith(("TUNELOOP_", "RAY_")):
            monkeypatch.delenv(name)
    yield


def feedback_until_accepted(replica: Gateway, key: str, body: dict[str, Any], timeout: float = 15) -> None:
    """POST feedback to `replica`; the request was captured by another replica, whose writer stores it
    a moment after answering, so a 404 is retried briefly (anything else fails at once)."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.post(
            f"{replica.url}/v1/feedback", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        if response.status_code == 201 or response.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.status_code == 201, response.text


def test_two_replicas_and_the_control_plane_share_one_capture_store(
    tmp_path: Path, tiny_model_dir: Path, tiny_lora_dir: Path, postgres: PostgresServer, clean_env: None
) -> None:
    docs = render(tmp_path, tiny_model_dir)
    secrets = secrets_of(docs)
    serving = workload(docs, "Deployment", "-serving")
    control = workload(docs, "Deployment", "-control")
    migrations = workload(docs, "Job", "-db-upgrade")
    assert serving["spec"]["replicas"] == 2

    db_url = postgres.create_database("topology")
    (control_port, gateway_a_port) = (free_port(), free_port())
    # The serving Service (port 8000) reaches replica A here: evaluation calls go there.
    machine = Machine(tmp_path / "machine", db_url, service_ports={8000: gateway_a_port})

    # The pre-install hook: `tuneloop db upgrade` with the migration Job's environment.
    (job,) = migrations["spec"]["template"]["spec"]["containers"]
    assert job["command"] == ["tuneloop", "db", "upgrade"]
    run_cli(machine.pod_env(container_env(job, secrets), "db-upgrade"), "db", "upgrade")

    (control_container,) = control["spec"]["template"]["spec"]["containers"]
    control_env = machine.pod_env(container_env(control_container, secrets), "control")
    ray_token = Path(control_env.get("RAY_AUTH_TOKEN_PATH", tmp_path / "unused"))
    ray_token.parent.mkdir(parents=True, exist_ok=True)
    ray_token.write_text(secrets[f"{RELEASE}-tuneloop-ray-auth"]["auth_token"])
    # An operator's first steps (README: kubectl exec deploy/tuneloop-control -- tuneloop ...).
    run_cli(control_env, "adapters", "import", ALIAS, str(tiny_lora_dir), "--base-model", str(tiny_model_dir))
    run_cli(control_env, "adapters", "promote", ALIAS, "1")
    key = run_cli(control_env, "keys", "create", "--scope", ALIAS).split()[-1]
    assert key.startswith("tl-")

    (gateway_container,) = serving["spec"]["template"]["spec"]["containers"]
    command = gateway_container["command"]
    assert command[:3] == ["tuneloop", "serve", "--model"]
    pod_env = container_env(gateway_container, secrets)
    assert "TUNELOOP_CAPTURE_DB_URL" in pod_env, "serving pods get no shared capture store"

    with ExitStack() as stack:
        replicas = start_together(
            stack,
            [
                start_gateway(
                    command[3],
                    machine.root / f"serving-{i}",
                    extra_env=machine.pod_env(pod_env, f"serving-{i}"),
                )
                for i in range(2)
            ],
        )
        a, b = replicas
        control_process = ManagedProcess(
            [TUNELOOP, "control", "--port", str(control_port)],  # the pod's command, on loopback
            log_path=machine.root / "control.log",
            health_url=f"http://{LOOPBACK}:{control_port}/health",
            env=child_env(control_env),
            name="tuneloop-control",
            ready_timeout=120,
        )
        stack.enter_context(control_process)

        # Users talk to replica A; their feedback lands on replica B (a load balancer's choice).
        client = OpenAI(base_url=a.base_url, api_key=key, max_retries=0, timeout=60)
        for i in range(WINDOW + WRONG):
            answer = client.completions.create(
                model=ALIAS, prompt=f"Question {i}:", max_tokens=3, temperature=0.0
            )
            # The deploy-time window is right, the recent one wrong: the right answers changed.
            label = "correct" if i < WINDOW else "wrong"
            feedback_until_accepted(b, key, {"request_id": answer.id, "label": label})

        # Both replicas and the control plane look at one store: the PostgreSQL of the chart's Secret.
        store = CaptureStore(db_url)
        judged = store.with_feedback(ALIAS)
        assert len(judged) == WINDOW + WRONG and {r.version for r, _ in judged} == {f"{ALIAS}@1"}
        store.close()

        # The control process's scheduler (every second) sees the drift.
        registry = Registry(db_url)
        deadline, found = time.monotonic() + 60, None
        while found is None and time.monotonic() < deadline:
            for event in registry.history(ALIAS):
                detail = event.detail or {}
                if (
                    event.kind == "drift.checked"
                    and detail.get("detector") == "feedback_cusum"
                    and detail.get("decision") == "drift"
                ):
                    found = event
            if found is None:
                assert control_process.alive(), control_process.log_tail()
                time.sleep(0.5)
        assert found is not None, [
            (e.kind, e.message) for e in registry.history(ALIAS) if e.kind == "drift.checked"
        ][-4:]
        assert json.dumps(found.detail)  # recorded as the loop records every check
        registry.engine.dispose()
