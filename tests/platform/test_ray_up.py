"""`tuneloop ray up/status/env/down` as a user runs them: a detached head that the documented
`ray job submit` reaches, a second `up` refused, and `down` leaving no process of its group behind.

The head gets a free dashboard port (8265 may belong to another Ray on the machine) and a temporary
TUNELOOP_HOME, whose deep pytest path also exercises the short /tmp fallback for Ray's temp dir.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.servers import RAY_CLI, listening_addresses

from tuneloop.platform.errors import ConflictError
from tuneloop.platform.procs import free_port, group_members, stop_group
from tuneloop.platform.ray import head

TUNELOOP = str(Path(sys.executable).with_name("tuneloop"))


def run(*argv: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=timeout)


def exports(text: str) -> dict[str, str]:
    """The variables of `export NAME=value` lines, as a shell's eval would set them."""
    found = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            found[name] = shlex.split(value)[0]
    return found


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """A minimal user environment with a private TUNELOOP_HOME (the venv's bin is not on PATH)."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TUNELOOP_HOME": str(tmp_path / "home")}


def test_up_refuses_a_busy_dashboard_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUNELOOP_RAY_DIR", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("TUNELOOP_RAY_ADDRESS", f"http://127.0.0.1:{port}")
        with pytest.raises(ConflictError, match=rf"port {port} on 127.0.0.1 is in use.*--dashboard-port"):
            head.up()
    assert not (tmp_path / "home" / "ray" / "head.pid").exists()


@pytest.mark.slow
def test_up_status_submit_down(user_env: dict[str, str], tmp_path: Path) -> None:
    ray_dir = Path(user_env["TUNELOOP_HOME"]) / "ray"
    port = free_port()
    up = run(TUNELOOP, "ray", "up", "--dashboard-port", str(port), "--num-cpus", "1", env=user_env)
    pid = int((ray_dir / "head.pid").read_text()) if (ray_dir / "head.pid").exists() else 0
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{port}" in up.stdout and "tuneloop ray down" in up.stdout
        info = json.loads((ray_dir / "head.json").read_text())
        assert info["pid"] == pid and (ray_dir / "auth_token").stat().st_mode & 0o077 == 0
        assert len(info["temp_dir"]) <= 40 and Path(info["temp_dir"]).is_dir()
        members = group_members(pid)
        assert {ip for ip, _ in listening_addresses(members)} == {"127.0.0.1"}

        again = run(TUNELOOP, "ray", "up", "--dashboard-port", str(free_port()), env=user_env)
        assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
        assert f"already running (pid {pid}" in again.stderr
        assert run(TUNELOOP, "ray", "status", env=user_env).returncode == 0

        # The README's flow: eval "$(tuneloop ray env)", then plain `ray job submit -- tuneloop ...`.
        env = user_env | exports(run(TUNELOOP, "ray", "env", env=user_env).stdout)
        assert env["RAY_ADDRESS"] == env["TUNELOOP_RAY_ADDRESS"] == f"http://127.0.0.1:{port}"
        workdir = tmp_path / "wd"
        workdir.mkdir()
        (workdir / "note.txt").write_text("from the working dir\n")
        submit = [RAY_CLI, "job", "submit", "--address", env["RAY_ADDRESS"], "--working-dir", str(workdir)]
        script = 'tuneloop version && cat note.txt && echo "home=$TUNELOOP_HOME"'
        job = run(*submit, "--", "sh", "-c", script, env=env)
        assert job.returncode == 0, job.stdout + job.stderr
        assert "tuneloop 0." in job.stdout and "from the working dir" in job.stdout
        assert f"home={user_env['TUNELOOP_HOME']}" in job.stdout  # the driver writes the user's registry
        listed = run(TUNELOOP, "jobs", "list", env=env)
        assert listed.returncode == 0 and "SUCCEEDED" in listed.stdout, listed.stderr

        down = run(TUNELOOP, "ray", "down", env=user_env)
        assert down.returncode == 0 and f"stopped Ray head (pid {pid}" in down.stdout, down.stderr
        assert group_members(pid) == []
        assert sorted(p.name for p in ray_dir.iterdir()) == [".lock", "head.log"]
        assert not Path(info["temp_dir"]).exists()
        assert run(TUNELOOP, "ray", "status", env=user_env).returncode == 1
        assert "nothing to stop" in run(TUNELOOP, "ray", "down", env=user_env).stdout
    finally:
        if pid and group_members(pid):
            stop_group(pid, grace=5)
