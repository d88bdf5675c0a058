"""A real loopback Ray head with token auth: jobs run through the SDK and the CLI, anonymous calls fail.

This is the contract `tuneloop train` submissions depend on (ENVIRONMENT.md): every listener on
127.0.0.1, and the Jobs API refusing requests without the private token.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from helpers.servers import RAY_CLI, RayHead, listening_addresses

from tuneloop.platform.procs import group_members
from tuneloop.platform.settings import child_env

pytestmark = pytest.mark.slow

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _wait_for_job(client: object, job_id: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)  # type: ignore[attr-defined]
        if status in TERMINAL:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout:.0f} s")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_head_services_stay_in_its_group_and_listen_on_loopback_only(ray_head: RayHead) -> None:
    members = group_members(ray_head.process.pid)
    # gcs, raylet and dashboard stay in the group, so stopping the group stops them; nothing escaped.
    commands = " ".join(_cmdline(pid) for pid in members)
    for service in ("gcs_server", "raylet", "dashboard/dashboard.py", "dashboard/agent.py"):
        assert service in commands, f"{service} is not in the head's process group"
    assert ray_head.process.leftovers() == sorted(members), "a Ray process left the head's process group"

    addresses = listening_addresses(members)
    assert addresses, "found no listening sockets for the Ray head's process group"
    assert {ip for ip, _ in addresses} == {"127.0.0.1"}, sorted(addresses)


def test_jobs_run_through_sdk_and_cli(ray_head: RayHead, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ray_head.env.items():
        monkeypatch.setenv(name, value)
    from ray.job_submission import JobSubmissionClient

    # The token goes in explicitly, as tuneloop's own client sends it: Ray reads RAY_AUTH_MODE once per
    # process, so a test that imported Ray before these variables were set would leave auth "disabled".
    client = JobSubmissionClient(ray_head.address, headers={"Authorization": f"Bearer {ray_head.token}"})
    started = time.monotonic()
    job_id = client.submit_job(entrypoint=f"{sys.executable} -c \"print('hello from the sdk job')\"")
    assert _wait_for_job(client, job_id) == "SUCCEEDED", client.get_job_logs(job_id)
    assert "hello from the sdk job" in client.get_job_logs(job_id)
    sdk_seconds = time.monotonic() - started

    submission_id = f"tuneloop-cli-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    argv = [
        RAY_CLI, "job", "submit", "--address", ray_head.address, "--submission-id", submission_id,
        "--", sys.executable, "-c", "print('hello from the cli job')",
    ]  # fmt: skip
    cli = subprocess.run(argv, env=child_env(ray_head.env), capture_output=True, text=True, timeout=180)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "hello from the cli job" in cli.stdout
    assert client.get_job_status(submission_id).value == "SUCCEEDED"
    assert "hello from the cli job" in client.get_job_logs(submission_id)
    print(
        f"\nRay head ready after {ray_head.process.ready_seconds:.1f} s; "
        f"SDK job {sdk_seconds:.1f} s; CLI job {time.monotonic() - started:.1f} s"
    )


# Ray answers 401 when the token is missing and 403 when it is wrong.
@pytest.mark.parametrize(("token", "status"), [(None, 401), ("not-the-token", 403)])
def test_jobs_api_refuses_requests_without_the_token(
    ray_head: RayHead, token: str | None, status: int
) -> None:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(f"{ray_head.address}/api/jobs/", headers=headers)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == status

    authorized = urllib.request.Request(
        f"{ray_head.address}/api/jobs/", headers={"Authorization": f"Bearer {ray_head.token}"}
    )
    with urllib.request.urlopen(authorized, timeout=10) as response:
        assert response.status == 200
