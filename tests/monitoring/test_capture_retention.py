"""Captured data stays bounded and private: retention, schema upgrades of older databases, file
modes, and database errors that show no captured text. Real SQLite files throughout; the failing
database is a real one (its table renamed under the writer)."""

from __future__ import annotations

import logging
import sqlite3
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from tuneloop.monitoring.capture import CaptureStore, CaptureWriter, FeedbackIn, RequestRecord
from tuneloop.platform.registry import Registry

OLD_SCHEMA = """
CREATE TABLE capture_requests (
    id INTEGER NOT NULL, request_id VARCHAR(128) NOT NULL, alias VARCHAR(128) NOT NULL,
    version VARCHAR(128) NOT NULL, prompt TEXT NOT NULL, answer TEXT NOT NULL, latency_s FLOAT NOT NULL,
    prompt_tokens INTEGER, completion_tokens INTEGER, status VARCHAR(16) NOT NULL,
    created_at DATETIME NOT NULL, PRIMARY KEY (id), UNIQUE (request_id)
);
CREATE INDEX ix_capture_requests_alias_created ON capture_requests (alias, created_at);
CREATE TABLE capture_feedback (
    id INTEGER NOT NULL, request_id VARCHAR(128) NOT NULL, label VARCHAR(64), rating INTEGER,
    corrected_answer TEXT, created_at DATETIME NOT NULL, PRIMARY KEY (id),
    FOREIGN KEY(request_id) REFERENCES capture_requests (request_id)
);
CREATE INDEX ix_capture_feedback_request_id ON capture_feedback (request_id);
INSERT INTO capture_requests VALUES (1, 'old-1', 'support', 'support@1', 'q', 'a', 0.1, NULL, NULL, 'ok',
    '2026-11-30 10:00:00');
INSERT INTO capture_feedback VALUES (1, 'old-1', 'good', NULL, NULL, '2026-11-30 10:01:00');
INSERT INTO capture_feedback VALUES (2, 'old-1', 'bad', NULL, NULL, '2026-11-30 10:02:00');
"""


def record(request_id: str, created_at: datetime | None = None, prompt: str = "q") -> RequestRecord:
    return RequestRecord(
        request_id, "support", "support@1", prompt, "a", 0.1,
        created_at=created_at or datetime.now(UTC), key_id=1,
    )  # fmt: skip


def test_a_database_of_the_old_schema_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    store = CaptureStore(f"sqlite:///{path}")
    columns = {c["name"] for c in inspect(store.engine).get_columns("capture_requests")}
    assert "key_id" in columns
    columns = {c["name"] for c in inspect(store.engine).get_columns("capture_feedback")}
    assert {"key_id", "by_admin"} <= columns
    indexes = {i["name"]: i["unique"] for i in inspect(store.engine).get_indexes("capture_feedback")}
    assert indexes == {"ux_capture_feedback_request_id": 1}
    # The request's latest feedback was kept; old rows have no key, so they judge nothing by default.
    ((request, feedback),) = store.with_feedback("support")
    assert (feedback.label, request.key_id, feedback.key_id) == ("bad", None, None)
    store.add_requests([record("new-1")])
    store.add_feedback(FeedbackIn(request_id="new-1", rating=5), key_id=1)
    store.add_feedback(FeedbackIn(request_id="new-1", rating=4), key_id=1)
    assert [f.rating for _, f in store.with_feedback("support")] == [None, 4]
    store.close()
    CaptureStore(f"sqlite:///{path}").close()  # a second open finds nothing left to do


def test_prune_deletes_old_and_surplus_requests_with_their_feedback(tmp_path: Path) -> None:
    store = CaptureStore(f"sqlite:///{tmp_path / 'c.db'}")
    now = datetime.now(UTC)
    store.add_requests([record(f"old-{i}", now - timedelta(days=40, minutes=i)) for i in range(3)])
    store.add_requests([record(f"new-{i}", now - timedelta(minutes=10 - i)) for i in range(5)])
    store.add_feedback(FeedbackIn(request_id="old-0", label="good"), key_id=1)
    store.add_feedback(FeedbackIn(request_id="new-0", label="good"), key_id=1)
    store.add_feedback(FeedbackIn(request_id="new-4", label="good"), key_id=1)
    assert store.prune(max_age_days=30) == 3
    assert store.prune(max_age_days=0, max_rows=2) == 3  # the oldest three of the five go
    assert [r.request_id for r in store.recent("support", since=now - timedelta(days=90))] == [
        "new-3",
        "new-4",
    ]
    assert [r.request_id for r, _ in store.with_feedback("support")] == ["new-4"]
    assert store.prune(max_age_days=30, max_rows=2) == 0
    store.close()


def test_the_writer_enforces_retention_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELOOP_CAPTURE_RETENTION_DAYS", "1")
    monkeypatch.setenv("TUNELOOP_CAPTURE_MAX_ROWS", "10")
    store = CaptureStore(f"sqlite:///{tmp_path / 'c.db'}")
    store.add_requests([record("ancient", datetime.now(UTC) - timedelta(days=2))])
    with CaptureWriter(store, enabled=True, sample_rate=1.0, redact="none", prune_interval_s=0.2) as writer:
        for i in range(25):
            writer.submit(record(f"r{i:02d}"))
        assert writer.flush(10)
        deadline = time.monotonic() + 10
        while len(store.recent("support", since=datetime.now(UTC) - timedelta(days=9))) > 10:
            assert time.monotonic() < deadline, "the writer never pruned"
            time.sleep(0.1)
        assert writer.stats.pruned >= 16
    kept = [r.request_id for r in store.recent("support", since=datetime.now(UTC) - timedelta(days=9))]
    assert kept == [f"r{i:02d}" for i in range(15, 25)]
    store.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_files_are_created_private(tmp_path: Path) -> None:
    store = CaptureStore(f"sqlite:///{tmp_path / 'cap' / 'capture.db'}")
    store.add_requests([record("r1")])
    registry = Registry(f"sqlite:///{tmp_path / 'reg' / 'registry.db'}")
    registry.add_api_key("0" * 64, "tl-0000000", scopes=[], admin=True)
    for folder, name in (("cap", "capture.db"), ("reg", "registry.db")):
        files = sorted((tmp_path / folder).iterdir())
        assert tmp_path / folder / name in files and len(files) >= 2  # the WAL files too
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    store.close()
    registry.engine.dispose()


def test_a_failing_database_logs_no_captured_text(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.db"
    store = CaptureStore(f"sqlite:///{path}")
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE capture_requests RENAME TO capture_requests_gone"))
    secret = "my account password is hunter2-PRIVATE"
    with caplog.at_level(logging.ERROR), CaptureWriter(store, enabled=True, sample_rate=1.0) as writer:
        writer.submit(record("r1", prompt=secret))
        assert writer.flush(10)
    assert writer.stats.failed == 1
    assert "no such table: capture_requests" in caplog.text  # the error is logged, with its traceback
    assert "INSERT INTO capture_requests" in caplog.text
    assert "hunter2" not in caplog.text and "PRIVATE" not in caplog.text
    store.close()
