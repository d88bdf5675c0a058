"""The asynchronous capture writer the gateway calls once per request.

`submit` is cheap and safe in the request path: a sampling coin, a non-blocking put on a bounded
queue, counters. It never blocks and never raises; when the queue is full the record is dropped
and counted. One background thread redacts, batches and inserts; store errors are logged
(throttled) and counted, and the database is (re)opened lazily, so a capture database that is down
at start-up or later costs captured records, never requests. The same thread enforces retention
(TUNELOOP_CAPTURE_RETENTION_DAYS, TUNELOOP_CAPTURE_MAX_ROWS) every `prune_interval_s`, so captured
data stays bounded wherever a gateway writes it.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Self

from tuneloop.monitoring.capture.redact import Redactor, bounded, load_redactor
from tuneloop.monitoring.capture.schema import RequestRecord
from tuneloop.monitoring.capture.store import CaptureStore
from tuneloop.platform import settings

log = logging.getLogger(__name__)
ERROR_LOG_INTERVAL_S = 60.0
PRUNE_INTERVAL_S = 300.0


@dataclass
class WriterStats:
    """Counters since the writer started (for `tuneloop_capture_*_total` metrics)."""

    submitted: int = 0
    sampled_out: int = 0
    dropped: int = 0
    """Not queued: the queue was full, or the writer closed."""
    written: int = 0
    duplicates: int = 0
    """Request ids already stored (a retried request), skipped."""
    failed: int = 0
    """Queued but lost: the store or the redaction hook failed."""
    errors: int = 0
    """Failures of any kind (each failed batch, failed redaction or unexpected submit error)."""
    pruned: int = 0
    """Stored requests deleted by retention."""


class CaptureWriter:
    """Samples, redacts and stores request records off the request path. Settings give the defaults."""

    def __init__(
        self,
        store: CaptureStore | str | None = None,
        *,
        enabled: bool | None = None,
        sample_rate: float | None = None,
        redact: Redactor | str | None = None,
        queue_size: int | None = None,
        max_field_chars: int | None = None,
        batch_size: int = 256,
        flush_interval_s: float = 0.2,
        seed: int | None = None,
        retention_days: float | None = None,
        max_rows: int | None = None,
        prune_interval_s: float = PRUNE_INTERVAL_S,
    ) -> None:
        """`store`: a store, or its URL to open on the writer thread. `redact`: a function or a
        `module:function` spec (`none` for no redaction). `retention_days`, `max_rows`: what
        `CaptureStore.prune` keeps (0: no limit), checked once at start and every `prune_interval_s`.
        `flush_interval_s`: how long a record waits for others to share its insert."""
        self.enabled = settings.TUNELOOP_CAPTURE_ENABLED.get() if enabled is None else enabled
        rate = settings.TUNELOOP_CAPTURE_SAMPLE_RATE.get() if sample_rate is None else sample_rate
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sample_rate must be between 0 and 1, got {rate}")
        self.sample_rate = rate
        spec = settings.TUNELOOP_CAPTURE_REDACT.get() if redact is None else redact
        self._redact = load_redactor(spec) if isinstance(spec, str) else spec
        # Every field is cut before redaction: a hook then works on bounded text, however long the prompt.
        self._max_chars = max_field_chars or settings.TUNELOOP_CAPTURE_MAX_FIELD_CHARS.get()
        self._store = store if isinstance(store, CaptureStore) else None
        self._store_url = store if isinstance(store, str) else None  # None: TUNELOOP_CAPTURE_DB_URL
        self._owns_store = self._store is None
        self._retention_days = (
            settings.TUNELOOP_CAPTURE_RETENTION_DAYS.get() if retention_days is None else retention_days
        )
        self._max_rows = settings.TUNELOOP_CAPTURE_MAX_ROWS.get() if max_rows is None else max_rows
        self._prune_interval = prune_interval_s
        self._next_prune = 0.0  # monotonic time of the next retention pass; 0: at the first chance
        self._queue: queue.Queue[RequestRecord] = queue.Queue(
            queue_size or settings.TUNELOOP_CAPTURE_QUEUE_SIZE.get()
        )
        self._batch_size, self._interval = batch_size, flush_interval_s
        self._rng = random.Random(seed)
        self._stats = WriterStats()
        self._pending = 0  # queued, not yet written or given up on; guarded by _lock
        self._lock = threading.Condition()
        self._closing = threading.Event()
        self._last_error_log = -ERROR_LOG_INTERVAL_S
        self._thread: threading.Thread | None = None
        if self.enabled and self.sample_rate > 0:
            self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
            self._thread.start()

    @property
    def stats(self) -> WriterStats:
        with self._lock:
            return replace(self._stats)

    def submit(self, record: RequestRecord) -> bool:
        """Queue `record` if it is sampled; True if queued. Never blocks, never raises."""
        try:
            if not self.enabled:
                return False
            with self._lock:
                self._stats.submitted += 1
                # random() is in [0, 1): rate 1 keeps every record, rate 0 none (and starts no thread).
                if self._rng.random() >= self.sample_rate:
                    self._stats.sampled_out += 1
                    return False
                if self._closing.is_set():
                    self._stats.dropped += 1
                    return False
                self._pending += 1
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                with self._lock:
                    self._pending -= 1
                    self._stats.dropped += 1
                return False
            return True
        except Exception as exc:  # the request path must never see a capture problem
            self._count_error("capture submit failed", n_failed=0, exc=exc)
            return False

    def redact(self, text: str) -> str:
        """`text` as the redaction hook stores it (feedback's corrected answers go through it too)."""
        return text if self._redact is None else self._redact(text)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued record was written (or given up on); False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to `timeout`), stop the thread, close a store it opened."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._store is not None and self._owns_store:
            self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self) -> None:
        while not (self._closing.is_set() and self._queue.empty()):
            batch = self._take_batch()
            if batch:
                self._write(batch)
            if time.monotonic() >= self._next_prune and not self._closing.is_set():
                self._prune()

    def _prune(self) -> None:
        self._next_prune = time.monotonic() + self._prune_interval
        if not (self._retention_days or self._max_rows):
            return
        try:
            if self._store is None:
                self._store = CaptureStore(self._store_url)
            removed = self._store.prune(max_age_days=self._retention_days, max_rows=self._max_rows)
        except Exception as exc:
            self._count_error("capture retention pass failed", n_failed=0, exc=exc)
            return
        if removed:
            log.info("capture retention deleted %d requests and their feedback", removed)
            with self._lock:
                self._stats.pruned += removed

    def _take_batch(self) -> list[RequestRecord]:
        try:
            batch = [self._queue.get(timeout=self._interval)]
        except queue.Empty:
            return []
        # Requests end one at a time: linger a moment so one transaction writes all that end in it
        # rather than one each (this thread shares the interpreter with the requests it records).
        if self._queue.qsize() + 1 < self._batch_size:
            self._closing.wait(self._interval)
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[RequestRecord]) -> None:
        clean: list[RequestRecord] = []
        for record in batch:
            if not isinstance(record, RequestRecord):  # one bad record must not sink its batch
                self._count_error(f"capture got a {type(record).__name__}, not a RequestRecord", n_failed=1)
                continue
            try:
                clean.append(self._redacted(record))
            except Exception as exc:  # never store text the hook was meant to clean
                self._count_error("capture redaction hook failed; record dropped", n_failed=1, exc=exc)
        written = 0
        try:
            if self._store is None:
                self._store = CaptureStore(self._store_url)
            written = self._store.add_requests(clean)
            with self._lock:
                self._stats.written += written
                self._stats.duplicates += len(clean) - written
        except Exception as exc:
            self._count_error(f"capture store write failed; {len(clean)} records lost", len(clean), exc)
        finally:
            with self._lock:
                self._pending -= len(batch)
                self._lock.notify_all()

    def _redacted(self, record: RequestRecord) -> RequestRecord:
        prompt, answer = bounded(record.prompt, self._max_chars), bounded(record.answer, self._max_chars)
        return replace(record, prompt=self.redact(prompt), answer=self.redact(answer))

    def _count_error(self, message: str, n_failed: int, exc: BaseException | None = None) -> None:
        with self._lock:
            self._stats.errors += 1
            self._stats.failed += n_failed
            now = time.monotonic()
            # One traceback a minute is enough to diagnose a broken database without flooding logs.
            if now - self._last_error_log < ERROR_LOG_INTERVAL_S:
                return
            self._last_error_log = now
        log.error("%s (errors so far: %d)", message, self._stats.errors, exc_info=exc)
