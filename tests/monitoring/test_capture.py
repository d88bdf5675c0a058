"""The capture store and its asynchronous writer: what reaches the database, and what never blocks.

Every test uses a real database (tests taking `store` run on SQLite and on PostgreSQL); "broken"
databases are real failures (a path that cannot be created, a table dropped under the writer), not
mocks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from tuneloop.monitoring.capture import (
    CaptureStore,
    CaptureWriter,
    FeedbackIn,
    RequestRecord,
    UnknownRequestError,
    load_redactor,
    mask_pii,
)
from tuneloop.platform import settings
from tuneloop.platform.errors import ConfigError, NotFoundError


def record(request_id: str, alias: str = "support", **overrides: object) -> RequestRecord:
    fields: dict[str, object] = {
        "request_id": request_id, "alias": alias, "version": "support:3", "prompt": f"question {request_id}",
        "answer": "an answer", "latency_s": 0.25, "prompt_tokens": 7, "completion_tokens": 3,
    }  # fmt: skip
    fields.update(overrides)
    return RequestRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def store(new_db_url: Callable[[str], str]) -> Iterator[CaptureStore]:
    """A fresh capture store, once on SQLite and once on the test session's PostgreSQL."""
    capture = CaptureStore(new_db_url("capture"))
    yield capture
    capture.close()


def writer_for(store: CaptureStore | str, **kwargs: object) -> CaptureWriter:
    options: dict[str, object] = {"enabled": True, "sample_rate": 1.0, "redact": "none", **kwargs}
    return CaptureWriter(store, **options)  # type: ignore[arg-type]


def test_records_are_written_asynchronously_and_readable(store: CaptureStore) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    with writer_for(store) as writer:
        assert all(writer.submit(r) for r in (record("a1"), record("b1", alias="other"), record("a2")))
        assert writer.flush(timeout=10)
        assert writer.stats.written == 3
    rows = store.recent("support", since=start)
    assert [r.request_id for r in rows] == ["a1", "a2"]
    first = rows[0]
    assert (first.version, first.prompt, first.answer) == ("support:3", "question a1", "an answer")
    assert first.latency_s == 0.25
    assert (first.prompt_tokens, first.completion_tokens, first.status) == (7, 3, "ok")
    assert first.created_at.tzinfo is not None and start <= first.created_at <= datetime.now(UTC)
    assert store.recent("support", since=datetime.now(UTC) + timedelta(seconds=1)) == []
    assert store.recent("support", since=start, until=start) == []
    assert [r.request_id for r in store.recent("other", since=start)] == ["b1"]
    assert store.recent("support", since=start, version="support:4") == []


def test_window_queries_use_request_times(store: CaptureStore) -> None:
    now = datetime.now(UTC)
    old, new = record("old", created_at=now - timedelta(days=2)), record("new", created_at=now)
    store.add_requests([old, new])
    assert [r.request_id for r in store.recent("support", since=now - timedelta(days=1))] == ["new"]
    window = store.recent("support", since=now - timedelta(days=3), until=now)
    assert [r.request_id for r in window] == ["old"]


class BlockingStore(CaptureStore):
    """A store whose writes wait for `release`: the writer thread is stuck as behind a slow database."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.entered, self.release = threading.Event(), threading.Event()

    def add_requests(self, records: Sequence[RequestRecord]) -> int:
        self.entered.set()
        self.release.wait(30)
        return super().add_requests(records)


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    store = BlockingStore(f"sqlite:///{tmp_path / 'capture.db'}")
    writer = writer_for(store, queue_size=5, batch_size=1)
    assert writer.submit(record("first"))
    assert store.entered.wait(10)  # the writer thread holds "first" and is stuck in the database
    durations = []
    for i in range(200):
        started = time.perf_counter()
        writer.submit(record(f"r{i}"))
        durations.append(time.perf_counter() - started)
    # Generous for a busy 2-core machine; a blocking put would take the 30 s release timeout.
    assert max(durations) < 0.05, max(durations)
    assert sorted(durations)[len(durations) // 2] < 0.001
    assert writer.stats.dropped == 195
    store.release.set()
    assert writer.flush(timeout=10)
    writer.close()
    assert writer.stats.written == 6
    assert len(store.recent("support", since=datetime.now(UTC) - timedelta(minutes=1))) == 6


def test_a_database_that_cannot_be_opened_never_raises(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with writer_for(f"sqlite:///{tmp_path / 'a-file' / 'capture.db'}") as writer:
        assert writer.submit(record("x")) and writer.submit(record("y"))
        assert writer.flush(timeout=10)
        stats = writer.stats
    assert (stats.written, stats.failed) == (0, 2) and stats.errors >= 1


def test_a_database_that_breaks_later_never_raises(store: CaptureStore) -> None:
    with writer_for(store) as writer:
        assert writer.submit(record("before")) and writer.flush(timeout=10)
        with store.engine.begin() as connection:
            connection.execute(text("DROP TABLE capture_feedback"))
            connection.execute(text("DROP TABLE capture_requests"))
        assert writer.submit(record("after"))
        assert writer.submit(None)  # type: ignore[arg-type]  # garbage in the request path, too
        assert writer.flush(timeout=10)
        stats = writer.stats
    assert (stats.written, stats.failed) == (1, 2) and stats.errors >= 2


@pytest.mark.parametrize("options", [{"sample_rate": 0.0}, {"enabled": False}])
def test_sampling_zero_or_capture_off_writes_nothing(store: CaptureStore, options: dict[str, object]) -> None:
    with writer_for(store, **options) as writer:
        assert not any(writer.submit(record(f"r{i}")) for i in range(50))
        assert writer.flush(timeout=1)
    assert store.recent("support", since=datetime.now(UTC) - timedelta(minutes=1)) == []
    assert writer.stats.written == 0


def test_sampling_one_writes_all_and_a_fraction_writes_some(store: CaptureStore) -> None:
    with writer_for(store, sample_rate=1.0) as everything, writer_for(store, sample_rate=0.3, seed=1) as some:
        for i in range(100):
            everything.submit(record(f"all-{i}"))
            some.submit(record(f"some-{i}"))
        assert everything.flush(timeout=10) and some.flush(timeout=10)
    assert everything.stats.written == 100
    assert 10 < some.stats.written < 50 and some.stats.sampled_out == 100 - some.stats.written


def test_settings_drive_the_writer(
    store: CaptureStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TUNELOOP_CAPTURE_SAMPLE_RATE", "1.5")
    with pytest.raises(ConfigError, match=r"TUNELOOP_CAPTURE_SAMPLE_RATE='1\.5'"):
        CaptureWriter(store)
    monkeypatch.setenv("TUNELOOP_CAPTURE_SAMPLE_RATE", "0")
    assert not CaptureWriter(store).submit(record("r"))
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    monkeypatch.delenv("TUNELOOP_CAPTURE_DB_URL", raising=False)
    assert settings.TUNELOOP_CAPTURE_DB_URL.get() == f"sqlite:///{tmp_path / 'capture.db'}"
    assert settings.TUNELOOP_CAPTURE_DB_URL.get() != settings.TUNELOOP_DB_URL.get()


def test_redaction_is_applied_before_storage(store: CaptureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNELOOP_CAPTURE_REDACT", raising=False)  # the default: the built-in masker
    secret = "Mail jane.doe+x@example.co.uk or call +1 555-123-4567, card 4111 1111 1111 1111, top 10"
    with CaptureWriter(store, enabled=True, sample_rate=1.0) as writer:
        writer.submit(record("pii", prompt=secret, answer="I wrote to jane@example.com"))
        assert writer.flush(timeout=10)
    stored = store.get("pii")
    assert stored is not None
    assert stored.prompt == "Mail <email> or call +<number>, card <number>, top 10"
    assert stored.answer == "I wrote to <email>"


def test_custom_and_failing_redaction_hooks(store: CaptureStore) -> None:
    with writer_for(store, redact="html:escape") as writer:
        writer.submit(record("html", prompt="<b>"))
        assert writer.flush(timeout=10)
    assert (stored := store.get("html")) is not None and stored.prompt == "&lt;b&gt;"

    def explode(text: str) -> str:
        raise RuntimeError("hook bug")

    with writer_for(store, redact=explode) as writer:
        writer.submit(record("unredacted"))
        assert writer.flush(timeout=10)
    assert store.get("unredacted") is None and writer.stats.failed == 1


@pytest.mark.parametrize("spec", ["mask_pii", "no_such_module:f", "html:nothing", "string:digits"])
def test_bad_redaction_hooks_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError, match="redaction hook"):
        load_redactor(spec)


def test_mask_pii_keeps_short_numbers() -> None:
    assert mask_pii("3 apples, 12 pears, 2024-11-30, a@b.io") == "3 apples, 12 pears, <number>, <email>"


def test_feedback_is_stored_and_joined_one_per_request(store: CaptureStore) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    store.add_requests([record("q1", key_id=7), record("q2"), record("o1", alias="other")])
    first = store.add_feedback(
        FeedbackIn(request_id="q1", label="wrong", rating=1, corrected_answer="Paris"), key_id=7
    )
    store.add_feedback(FeedbackIn(request_id="o1", label="good"), key_id=9)
    # A later feedback on the same request replaces the earlier one, and counts as the newest.
    again = store.add_feedback(FeedbackIn(request_id="q1", rating=2), key_id=8, by_admin=True)
    assert again.id > first.id
    pairs = store.with_feedback("support", since=since)
    assert [(r.request_id, f.label, f.rating, f.corrected_answer) for r, f in pairs] == [
        ("q1", None, 2, None)
    ]
    request, feedback = pairs[0]
    assert (request.prompt, request.key_id, feedback.key_id, feedback.by_admin) == ("question q1", 7, 8, True)
    with store.session() as session:
        assert session.execute(text("SELECT COUNT(*) FROM capture_feedback")).scalar() == 2
    assert store.with_feedback("support", since=datetime.now(UTC) + timedelta(seconds=1)) == []


def test_concurrent_feedback_on_one_request_leaves_one_row(store: CaptureStore) -> None:
    store.add_requests([record("busy", key_id=1)])
    barrier = threading.Barrier(8)
    failed: list[BaseException] = []

    def give(rating: int) -> None:
        barrier.wait()
        try:
            store.add_feedback(FeedbackIn(request_id="busy", rating=rating), key_id=1)
        except BaseException as exc:  # every writer must succeed: the last one wins
            failed.append(exc)

    threads = [threading.Thread(target=give, args=(1 + i % 5,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failed == [] and len(store.with_feedback("support")) == 1


def test_feedback_on_an_unknown_request_is_a_clear_error(store: CaptureStore) -> None:
    with pytest.raises(UnknownRequestError, match="no captured request with id 'nope'") as caught:
        store.add_feedback(FeedbackIn(request_id="nope", label="good"))
    assert isinstance(caught.value, NotFoundError)


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "q1"},  # says nothing
        {"request_id": "q1", "rating": "5"},
        {"request_id": "q1", "rating": 4.0},
        {"request_id": "q1", "rating": True},
        {"request_id": "q1", "rating": 6},
        {"request_id": "q1", "label": 3},
        {"request_id": "q1", "label": "x" * 65},
        {"request_id": "q1", "corrected_answer": ["Paris"]},
        {"request_id": "q1", "label": "good", "stars": 5},
        {"request_id": "", "label": "good"},
        {"label": "good"},
    ],
)
def test_bad_feedback_is_rejected(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FeedbackIn.model_validate(body)


def test_feedback_body_from_json() -> None:
    feedback = FeedbackIn.model_validate_json('{"request_id": "cmpl-1", "rating": 5, "label": " good "}')
    assert (feedback.rating, feedback.label, feedback.corrected_answer) == (5, "good", None)


def test_a_retried_request_id_is_stored_once(store: CaptureStore) -> None:
    with writer_for(store, batch_size=10) as writer:
        for request in (record("same"), record("same"), record("other")):
            writer.submit(request)
        assert writer.flush(timeout=10)
    assert (writer.stats.written, writer.stats.duplicates) == (2, 1)


def test_writer_opens_the_configured_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNELOOP_CAPTURE_DB_URL", f"sqlite:///{tmp_path / 'deep' / 'capture.db'}")
    with CaptureWriter(enabled=True, sample_rate=1.0, redact="none") as writer:
        writer.submit(record("configured"))
        assert writer.flush(timeout=10)
    store = CaptureStore()
    assert (stored := store.get("configured")) is not None and stored.alias == "support"
    store.close()
