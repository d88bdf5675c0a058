from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.platform import settings
from tuneloop.platform.errors import ConfigError


def test_defaults_live_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    monkeypatch.delenv("TUNELOOP_DB_URL", raising=False)
    monkeypatch.delenv("TUNELOOP_ARTIFACTS", raising=False)
    monkeypatch.delenv("TUNELOOP_HOST", raising=False)
    assert settings.TUNELOOP_DB_URL.get() == f"sqlite:///{tmp_path}/registry.db"
    assert settings.TUNELOOP_ARTIFACTS.get() == str(tmp_path / "artifacts")
    assert settings.TUNELOOP_HOST.get() == "127.0.0.1"
    assert settings.bind_host() == "127.0.0.1"


def test_home_defaults_to_dot_tuneloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNELOOP_HOME", raising=False)
    assert settings.TUNELOOP_HOME.get() == Path.home() / ".tuneloop"


def test_remote_bind_needs_explicit_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNELOOP_ALLOW_REMOTE_BIND", raising=False)
    with pytest.raises(ConfigError, match="TUNELOOP_ALLOW_REMOTE_BIND"):
        settings.bind_host("0.0.0.0")
    monkeypatch.setenv("TUNELOOP_ALLOW_REMOTE_BIND", "1")
    assert settings.bind_host("0.0.0.0") == "0.0.0.0"


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELOOP_PORT", "eighty")
    with pytest.raises(ConfigError, match="TUNELOOP_PORT='eighty'"):
        settings.TUNELOOP_PORT.get()


def test_every_variable_declared_once_and_documented() -> None:
    names = [v.name for v in settings.ALL]
    assert len(names) == len(set(names))
    assert all(v.doc for v in settings.ALL)
    assert "TUNELOOP_HOME" in names


READERS = ("platform/settings.py", "platform/env/vars.py")  # the helpers, and Var.get


def test_nothing_else_reads_os_environ() -> None:
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for folder in ("platform", "serve", "train", "monitoring", "demo"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            readers = ("platform/settings.py", "platform/env/vars.py")  # Var.get, and the helpers
            if path.relative_to(root).as_posix() not in readers and (
                "os.environ" in text or "os.getenv" in text
            ):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []


def test_a_handed_value_is_taken_once_and_not_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELOOP_TEST_HANDED", "payload")
    assert settings.take_handed("TUNELOOP_TEST_HANDED") == "payload"
    assert "TUNELOOP_TEST_HANDED" not in settings.child_env()
    with pytest.raises(ConfigError, match="TUNELOOP_TEST_HANDED is not set"):
        settings.take_handed("TUNELOOP_TEST_HANDED")
