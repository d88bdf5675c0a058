"""Secrets stay secret: `tuneloop env`, registry and capture errors, and what a training job's
environment carries (the Ray runtime env, readable through the Jobs API, never holds a password).
tests/platform/test_jobs.py submits such a job to a real Ray head and reads its runtime env back."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneloop.monitoring.capture import CaptureStore
from tuneloop.platform import settings
from tuneloop.platform.artifacts import ArtifactStore
from tuneloop.platform.errors import ArtifactError, ConfigError
from tuneloop.platform.ray import submit as jobs
from tuneloop.platform.ray.cluster import head_env
from tuneloop.platform.registry import db

TUNELOOP = str(Path(sys.executable).with_name("tuneloop"))
PASSWORD = "hunter2-s3cret"
PG_URL = f"postgresql+psycopg://tuneloop:{PASSWORD}@db.internal:5432/tuneloop"


def test_tuneloop_env_masks_passwords_and_secret_values(tmp_path: Path) -> None:
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(tmp_path),
        "TUNELOOP_HOME": str(tmp_path / "tl"),
        "TUNELOOP_DB_URL": PG_URL,
        "TUNELOOP_CAPTURE_DB_URL": f"postgresql://capture:{PASSWORD}@db.internal/capture",
        "TUNELOOP_EVAL_KEY": "tl-admin-key-that-must-not-show",
        "TUNELOOP_CONTROL_TOKEN": "control-token-that-must-not-show",
    }
    out = subprocess.run([TUNELOOP, "env"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert PASSWORD not in out.stdout and "must-not-show" not in out.stdout
    lines = set(out.stdout.splitlines())
    assert "TUNELOOP_DB_URL=postgresql+psycopg://tuneloop:***@db.internal:5432/tuneloop" in lines
    assert "TUNELOOP_CAPTURE_DB_URL=postgresql://capture:***@db.internal/capture" in lines
    assert {"TUNELOOP_EVAL_KEY=***", "TUNELOOP_CONTROL_TOKEN=***"} <= lines
    assert f"TUNELOOP_HOME={tmp_path / 'tl'}" in lines  # everything else as it is


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://u:p@h/db",
        "postgresql+psycopg://user:p%40ss:word@host:5432/db?sslmode=require",
        "s3://key:secret@bucket/prefix",
        "error at postgresql://u:p@h/db and mysql://a:b@c/d",
    ],
)
def test_redact_url_masks_every_password(text: str) -> None:
    masked = settings.redact_url(text)
    assert "***@" in masked and ":p@" not in masked and ":secret@" not in masked and ":b@" not in masked


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://u:pa/ss-word@h/db", "ss-word"),  # "/", "#", "?" unencoded: SQLAlchemy takes them
        ("postgresql://u:pa#ss-word@h/db", "ss-word"),
        ("postgresql://u:pa?ss-word@h:5432/db", "ss-word"),
        ("postgresql://u@h/db?sslmode=require&password=hunter2-x", "hunter2-x"),
        ("mysql://u@h/db?PASSWORD=hunter2-x", "hunter2-x"),
    ],
)
def test_redact_url_masks_passwords_sqlalchemy_accepts(
    url: str, secret: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert secret not in settings.redact_url(url) and settings.HIDDEN in settings.redact_url(url)
    monkeypatch.setenv("TUNELOOP_DB_URL", url)
    assert secret not in repr(jobs.job_env())  # through a private file, not the job's env
    monkeypatch.setenv("TUNELOOP_JOB_REGISTRY_CREDENTIALS", "cluster")
    assert secret not in repr(jobs.job_env())


def test_redact_url_leaves_urls_without_a_password_alone() -> None:
    for text in ("sqlite:////var/lib/t/registry.db", "http://127.0.0.1:8265", "postgresql://user@host/db"):
        assert settings.redact_url(text) == text


@pytest.mark.parametrize(
    "url",
    [
        f"nosuchdialect://u:{PASSWORD}@host/db",  # an unknown dialect
        f"postgresql://u:{PASSWORD}@host:notaport/db",  # a URL SQLAlchemy cannot parse
    ],
)
def test_registry_and_capture_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as registry_error:
        db.make_engine(url)
    assert PASSWORD not in str(registry_error.value) and "***" in str(registry_error.value)
    with pytest.raises(ConfigError) as capture_error:
        CaptureStore(url)
    assert PASSWORD not in str(capture_error.value)


def test_artifact_store_errors_never_show_the_password() -> None:
    with pytest.raises(ArtifactError) as caught:
        ArtifactStore(f"nosuchprotocol://key:{PASSWORD}@bucket/prefix")
    assert PASSWORD not in str(caught.value)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    for name in ("TUNELOOP_DB_URL", "TUNELOOP_DB_URL_FILE", "TUNELOOP_JOB_REGISTRY_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def test_a_job_gets_a_password_free_url_as_it_is(home: Path) -> None:
    env = jobs.job_env()
    assert env["TUNELOOP_DB_URL"] == f"sqlite:///{home}/registry.db"
    assert "TUNELOOP_DB_URL_FILE" not in env and not (home / "secrets").exists()


def test_on_one_machine_a_job_reads_the_url_from_a_private_file(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_DB_URL", PG_URL)
    env = jobs.job_env()
    assert PASSWORD not in repr(env) and env["TUNELOOP_DB_URL"] == ""
    path = Path(env["TUNELOOP_DB_URL_FILE"])
    assert path.parent == home / "secrets" and path.name.startswith("registry-url-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == PG_URL
    # The driver, with exactly these variables, resolves the same URL.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert settings.TUNELOOP_DB_URL.get() == PG_URL
    # A head started from this shell hands its drivers the same, not the password.
    monkeypatch.setenv("TUNELOOP_DB_URL", PG_URL)
    started = head_env(home / "token")
    assert PASSWORD not in repr(started) and started["TUNELOOP_DB_URL_FILE"] == str(path)


def test_on_a_cluster_that_has_the_url_the_job_env_names_none(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_DB_URL", PG_URL)
    monkeypatch.setenv("TUNELOOP_JOB_REGISTRY_CREDENTIALS", "cluster")
    env = jobs.job_env()
    assert "TUNELOOP_DB_URL" not in env and "TUNELOOP_DB_URL_FILE" not in env
    assert PASSWORD not in repr(env) and not (home / "secrets").exists()
    monkeypatch.setenv("TUNELOOP_JOB_REGISTRY_CREDENTIALS", "elsewhere")
    with pytest.raises(ConfigError, match="TUNELOOP_JOB_REGISTRY_CREDENTIALS='elsewhere'"):
        jobs.job_env()


def test_a_missing_url_file_is_a_clear_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELOOP_DB_URL_FILE", str(home / "nowhere"))
    with pytest.raises(ConfigError, match="cannot read the registry URL from TUNELOOP_DB_URL_FILE"):
        settings.TUNELOOP_DB_URL.get()


def test_a_postgres_registry_that_never_answers_fails_in_time_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (psycopg) is not installed")
    from helpers.servers import stalled_server

    from tuneloop.platform.errors import DatabaseUnreachableError
    from tuneloop.platform.registry import Registry

    monkeypatch.setenv("TUNELOOP_DB_CONNECT_TIMEOUT_S", "2")
    with stalled_server() as address:
        url = f"postgresql+psycopg://tuneloop:{PASSWORD}@{address.removeprefix('http://')}/tuneloop"
        started = time.monotonic()
        with pytest.raises(DatabaseUnreachableError) as caught:
            Registry(url)
        assert time.monotonic() - started < 20
        message = str(caught.value)
        assert PASSWORD not in message and "tuneloop:***@127.0.0.1" in message and "timeout" in message
        started = time.monotonic()
        with pytest.raises(Exception) as capture_error:
            CaptureStore(url)
        assert time.monotonic() - started < 20 and PASSWORD not in str(capture_error.value)


def test_a_submission_to_another_registry_never_changes_a_running_jobs_file(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_DB_URL", PG_URL)
    first = Path(jobs.job_env()["TUNELOOP_DB_URL_FILE"])
    other = PG_URL.replace("/tuneloop", "/other")
    monkeypatch.setenv("TUNELOOP_DB_URL", other)
    second = Path(jobs.job_env()["TUNELOOP_DB_URL_FILE"])
    assert first != second and (first.read_text(), second.read_text()) == (PG_URL, other)


def test_redact_url_is_linear_on_hostile_text() -> None:
    """Error messages can carry what a user sent: text built to make a scanner backtrack (long runs of
    scheme characters, many `scheme://user:` with no "@") must not cost quadratic time. The first two
    took 28 s and 8 s with the regex this replaced (one that scanned to the run's last "@" from every
    start); now a few milliseconds, and the bound asserted is hundreds of times that, so only a
    return to quadratic time fails it."""
    for text in ("a" * 200_000, "a://b:" * 40_000, "a://b:c@" * 30_000):
        started = time.monotonic()
        masked = settings.redact_url(text)
        assert time.monotonic() - started < 2.0
        assert ":c@" not in masked
    assert settings.redact_url("x-postgresql://u:p@h a://b:c") == "x-postgresql://u:***@h a://b:c"
