"""`tuneloop jobs ...` against a real loopback Ray head: submit, status, logs, list, stop, and errors.

The wrapper is tested with entrypoints the test controls (a `python -c` script), so it does not depend
on `tuneloop train`; one test submits a real spec that fails fast in the driver, to prove the driver's
error reaches the user and the registry. Staging and local validation need no Ray and run fast.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from helpers.servers import RayHead, stalled_server

from tuneloop.platform.data.formats import DataError
from tuneloop.platform.errors import ConfigError
from tuneloop.platform.procs import free_port
from tuneloop.platform.ray import submit as jobs
from tuneloop.platform.ray.client import JobNotFoundError, JobsClient, RayAuthError, RayUnreachableError
from tuneloop.platform.registry import Registry
from tuneloop.platform.spec import load_spec, parse_spec

TUNELOOP = str(Path(sys.executable).with_name("tuneloop"))


def chat(i: int) -> str:
    turns = [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]
    return json.dumps({"messages": turns}) + "\n"


def write_spec(folder: Path, *, base_model: str = "smollm2-135m", lines: int = 12, **extra: object) -> Path:
    """A small valid spec with its chat data beside it in data/chat.jsonl."""
    data = folder / "data" / "chat.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(chat(i) for i in range(lines)))
    spec = {
        "base_model": base_model,
        "method": {"name": "lora", "rank": 4},
        "data": {"train": "data/chat.jsonl", "min_examples": 4},
        "hyperparameters": {"max_steps": 1},
        "output": {"adapter": "jobs-test"},
        **extra,
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private TUNELOOP_HOME, so the registry the jobs write is this test's own."""
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    for name in ("TUNELOOP_DB_URL", "TUNELOOP_ARTIFACTS", "TUNELOOP_MODELS_DIR", "TUNELOOP_RAY_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture
def on_head(ray_head: RayHead, home: Path, monkeypatch: pytest.MonkeyPatch) -> RayHead:
    """`tuneloop jobs` pointed at the session's Ray head by the variables users set."""
    monkeypatch.setenv("TUNELOOP_RAY_ADDRESS", ray_head.address)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", ray_head.env["RAY_AUTH_TOKEN_PATH"])
    return ray_head


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": env.get("HOME", "/tmp")}
    return subprocess.run([TUNELOOP, *args], capture_output=True, text=True, env=base | env, timeout=120)


# -- no Ray needed


def test_staged_working_dir_holds_only_the_spec_and_its_data(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path)
    (tmp_path / "unrelated-big-file.bin").write_bytes(b"\0" * 1024)
    with jobs.staged_working_dir(spec_path) as (workdir, name):
        files = sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*") if p.is_file())
        assert files == ["data/train/chat.jsonl", "job.yaml"]
        staged = load_spec(workdir / name)
        assert staged.data.train == workdir / "data/train/chat.jsonl"
        assert staged == load_spec(spec_path).model_copy(update={"data": staged.data})
    assert not workdir.exists()


def test_bad_spec_or_data_fails_before_submission(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens at this address: had validation not failed first, the error would be "unreachable".
    address = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "token").write_text("t" * 64)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    bad_key = write_spec(tmp_path / "a", hyperparameters={"learnig_rate": 1e-4})
    with pytest.raises(ConfigError, match=r"hyperparameters\.learnig_rate: unknown key"):
        jobs.submit_spec(bad_key, address=address)
    bad_data = write_spec(tmp_path / "b")
    with (tmp_path / "b" / "data" / "chat.jsonl").open("a") as fh:
        fh.write('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with pytest.raises(DataError, match=r"chat\.jsonl:13: .*last turn must be the assistant"):
        jobs.submit_spec(bad_data, address=address)
    with pytest.raises(RayUnreachableError, match="cannot reach the Ray Jobs API"):
        jobs.submit_spec(write_spec(tmp_path / "c"), address=address)
    assert not (home / "registry.db").exists(), "nothing may be recorded for a job that was never submitted"


def test_a_leak_between_given_splits_fails_before_submission(tmp_path: Path, home: Path) -> None:
    """`jobs submit` promises local checks: the leakage check runs here, not first on the cluster."""
    spec_path = write_spec(
        tmp_path, data={"train": "data/chat.jsonl", "test": "data/test.jsonl", "min_examples": 4}
    )
    (tmp_path / "data" / "test.jsonl").write_text(chat(3) + chat(100))
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens: only a local check can fail first
    with pytest.raises(DataError, match=r"test\.jsonl:1 repeats .*chat\.jsonl:4"):
        jobs.submit_spec(spec_path, address=address)
    assert not (home / "registry.db").exists()


def test_messages_from_the_cluster_name_the_users_files(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path)
    sources = jobs.staged_sources(spec_path)
    assert sources == {"data/train/chat.jsonl": str(tmp_path / "data" / "chat.jsonl")}
    ray_path = "/tmp/ray/session_x/runtime_resources/working_dir_files/_ray_pkg_0a1b2c/data/train/chat.jsonl"
    shown = jobs.unstage(f"DataError: {ray_path}:20 repeats {ray_path}:3", sources)
    assert shown == f"DataError: {tmp_path}/data/chat.jsonl:20 repeats {tmp_path}/data/chat.jsonl:3"


def test_unreachable_ray_and_missing_token_are_one_line_errors(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t" * 64)
    env = {"TUNELOOP_HOME": str(tmp_path / "home"), "RAY_AUTH_TOKEN_PATH": str(token)}
    unreachable = cli("jobs", "list", env=env | {"TUNELOOP_RAY_ADDRESS": f"http://127.0.0.1:{free_port()}"})
    no_token = cli("jobs", "status", "x", env=env | {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    for out, expected in ((unreachable, "cannot reach the Ray Jobs API"), (no_token, "no Ray auth token in")):
        assert out.returncode == 1
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith("tuneloop: error: ") and expected in out.stderr


def test_a_stalled_ray_head_is_an_error_after_the_timeout_not_a_hang(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t" * 64)
    with stalled_server() as address:
        started = time.monotonic()
        with pytest.raises(RayUnreachableError, match=r"did not answer within 1 s"):
            JobsClient(address, token_path=token, timeout=1)
        assert time.monotonic() - started < 10
        # The CLI, with the setting, says so in one line.
        env = {
            "TUNELOOP_HOME": str(tmp_path / "home"),
            "RAY_AUTH_TOKEN_PATH": str(token),
            "TUNELOOP_RAY_ADDRESS": address,
            "TUNELOOP_RAY_TIMEOUT_S": "1.5",
        }
        started = time.monotonic()
        out = cli("jobs", "status", "x", env=env)
        assert time.monotonic() - started < 30
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert "did not answer within 1.5 s" in out.stderr and "TUNELOOP_RAY_TIMEOUT_S" in out.stderr


# -- against the real head


@pytest.mark.slow
def test_submit_status_logs_list_stop(on_head: RayHead, capsys: pytest.CaptureFixture[str]) -> None:
    client = JobsClient()
    counting = "import time; print('counting'); [print(i, flush=True) or time.sleep(0.2) for i in range(5)]"
    short = client.submit(f'{sys.executable} -c "{counting}"', metadata={jobs.META_ADAPTER: "demo"})
    assert jobs.jobs_logs(short, follow=True) == 0
    out = capsys.readouterr().out
    assert "counting" in out and "\n4\n" in out
    assert out.rstrip().endswith(f"{short} SUCCEEDED: Job finished successfully.")
    assert jobs.jobs_logs(short) == 0 and "counting" in capsys.readouterr().out

    long = client.submit(
        f"{sys.executable} -c \"import time; print('started', flush=True); time.sleep(300)\""
    )
    deadline = time.monotonic() + 60
    while client.status(long) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert jobs.jobs_status(long) == 0
    assert capsys.readouterr().out.startswith(f"{long} RUNNING")
    assert jobs.jobs_list() == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    listed = {row[0]: (row[1], row[4]) for row in rows}  # id, status, date, time, adapter, ...
    assert listed[short] == ("SUCCEEDED", "demo") and listed[long] == ("RUNNING", "-")
    started = time.monotonic()
    assert jobs.jobs_stop(long) == 0
    assert capsys.readouterr().out.strip() == f"{long} STOPPED"
    assert time.monotonic() - started < 30
    assert jobs.jobs_stop(long) == 0 and "had already ended: STOPPED" in capsys.readouterr().out


@pytest.mark.slow
def test_unknown_job_id_is_a_one_line_error(on_head: RayHead, home: Path) -> None:
    for call in (jobs.jobs_status, jobs.jobs_logs, jobs.jobs_stop):
        with pytest.raises(JobNotFoundError, match="no Ray job 'no-such-job'"):
            call("no-such-job")
    env = {
        "TUNELOOP_HOME": str(home),
        "TUNELOOP_RAY_ADDRESS": on_head.address,
        "RAY_AUTH_TOKEN_PATH": on_head.env["RAY_AUTH_TOKEN_PATH"],
    }
    out = cli("jobs", "logs", "no-such-job", "--follow", env=env)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "no Ray job 'no-such-job'" in out.stderr

    home.mkdir(parents=True, exist_ok=True)
    (home / "wrong-token").write_text("w" * 64)
    with pytest.raises(RayAuthError, match="refused the token"):
        JobsClient(token_path=home / "wrong-token")


@pytest.mark.slow
def test_submitted_spec_runs_tuneloop_train_and_its_failure_surfaces(
    on_head: RayHead, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A fresh TUNELOOP_HOME has no pulled models: `tuneloop train` must fail fast, whatever stage it is at.
    spec_path = write_spec(tmp_path)
    assert jobs.jobs_submit(spec_path, follow=True) == 1
    out = capsys.readouterr().out
    job_id = out.splitlines()[0]
    assert job_id.startswith("tuneloop-jobs-test-")
    assert f"Running entrypoint for job {job_id}: tuneloop train job.yaml" in out
    assert "tuneloop: error:" in out, out  # the driver's own one-line error, shown to the submitter
    assert out.rstrip().splitlines()[-1].startswith(f"{job_id} FAILED")

    info = JobsClient().info(job_id)
    env_vars = (info.runtime_env or {}).get("env_vars", {})
    assert env_vars["TUNELOOP_HOME"] == str(home)
    assert env_vars["TUNELOOP_DB_URL"] == f"sqlite:///{home}/registry.db"
    job = Registry().get_job(job_id)
    assert (job.adapter_name, job.status) == ("jobs-test", "failed")
    assert job.spec["base_model"] == "smollm2-135m"
    assert parse_spec(job.spec).output.adapter == "jobs-test"  # a retrain reads the spec back from here


@pytest.mark.slow
def test_a_job_never_carries_the_registry_password_in_its_runtime_env(
    on_head: RayHead, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver reaches a password-protected registry URL through a private file; the job's runtime
    env, read back through the Jobs API (SDK and plain HTTP, as the dashboard reads it), has no password."""
    password = "hunter2-s3cret"
    url = f"postgresql+psycopg://tuneloop:{password}@db.internal:5432/tuneloop"
    monkeypatch.setenv("TUNELOOP_DB_URL", url)
    script = (
        "import hashlib; from tuneloop.platform import settings; "
        "print('url-sha256', hashlib.sha256(settings.TUNELOOP_DB_URL.get().encode()).hexdigest())"
    )
    client = JobsClient()
    job_id = client.submit(f'{sys.executable} -c "{script}"', env_vars=jobs.job_env())
    assert client.wait(job_id, timeout=120, interval=0.3) == "SUCCEEDED", client.logs(job_id)
    assert f"url-sha256 {hashlib.sha256(url.encode()).hexdigest()}" in client.logs(job_id)
    info = client.info(job_id)
    env_vars = (info.runtime_env or {}).get("env_vars", {})
    assert env_vars["TUNELOOP_DB_URL_FILE"].startswith(str(home / "secrets" / "registry-url-"))
    assert password not in json.dumps(info.runtime_env)
    raw = httpx.get(
        f"{on_head.address}/api/jobs/{job_id}",
        headers={"Authorization": f"Bearer {on_head.token}"},
        timeout=10,
    )
    assert raw.status_code == 200 and "TUNELOOP_DB_URL_FILE" in raw.text and password not in raw.text
