"""One completion request's bookkeeping: the `Call`, closed exactly once however the request ends.

It holds what the request took (in-flight slot, adapter lease, gauge) and gives it back, records
the request's metrics, and hands the finished request to capture (`on_close`). It is closed by the
pipeline for whole answers and refusals, and by the proxied stream when a stream ends, fails, or
its client goes away (serve/request/proxy.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneloop.monitoring import metrics
from tuneloop.serve.routing.resolver import Target

log = logging.getLogger(__name__)
READ_EVENTS = 64
"""Stream events kept undecoded at most: their text is read in one decode when this many wait."""


@dataclass(eq=False)
class Call:
    """One completion request's bookkeeping; `close()` records its metrics and frees what it holds."""

    endpoint: str
    request_id: str = ""
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    requested: str = ""
    alias: str = ""
    version: str = ""
    status: int = 200
    first_token_at: float | None = None
    usage: dict[str, Any] | None = None
    capturing: bool = False
    """Collect the answer text (first choice) for capture; off, nothing is kept."""
    prompt: str = ""
    key_id: int | None = None
    """Registry id of the API key that made the request, for capture (feedback is checked against it)."""
    answer: list[str] = field(default_factory=list)
    """The answer's text so far, in parts (stream events not yet read are in `_events`)."""
    on_close: Callable[[Call], None] | None = None
    """Called last by `close()` (capture); its failures are logged, never raised."""
    _cleanups: list[Callable[[], None]] = field(default_factory=list)
    _closed: bool = False
    _events: list[bytes] = field(default_factory=list)

    def label(self, target: Target) -> None:
        self.alias, self.version, self.requested = target.alias, target.version, target.requested

    def hold(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` at close (release a slot, a lease, a gauge)."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ended = time.monotonic()
        labels = (self.endpoint, self.alias, self.version)
        metrics.REQUESTS.labels(*labels, str(self.status)).inc()
        metrics.REQUEST_SECONDS.labels(*labels).observe(self.ended - self.started)
        if self.first_token_at is not None:
            ttft = self.first_token_at - self.started
            metrics.TIME_TO_FIRST_TOKEN_SECONDS.labels(self.alias, self.version).observe(ttft)
        if self.usage:
            prompt, generated = self.usage.get("prompt_tokens"), self.usage.get("completion_tokens")
            if isinstance(prompt, int):
                metrics.PROMPT_TOKENS.labels(self.alias, self.version).inc(prompt)
            if isinstance(generated, int):
                metrics.GENERATION_TOKENS.labels(self.alias, self.version).inc(generated)
        for cleanup in reversed(self._cleanups):
            cleanup()
        if self.on_close is not None:
            try:
                self.on_close(self)
            except Exception:  # bookkeeping must never fail a request that was answered
                log.exception("closing request %s: on_close failed", self.request_id)

    def keep_answer(self, choices: Any) -> None:
        """Append the first choice's text (a whole answer or a stream delta) when capturing."""
        if self.capturing:
            self._read_events()  # text kept earlier comes first
            self.answer.extend(_first_choice_text(choices))

    def keep_event(self, payload: bytes) -> None:
        """Keep a stream event's JSON when capturing, to read its text together with the events
        around it: one decode of `READ_EVENTS` events costs less than half of decoding each as it
        passes (issue 14), and no more than that many are held undecoded."""
        if self.capturing:
            self._events.append(payload)
            if len(self._events) >= READ_EVENTS:
                self._read_events()

    def answer_text(self) -> str:
        """The first choice's text, from what was kept so far."""
        self._read_events()
        return "".join(self.answer)

    def _read_events(self) -> None:
        if self._events:
            for event in _decoded(self._events):
                choices = event.get("choices") if isinstance(event, dict) else None
                self.answer.extend(_first_choice_text(choices))
            self._events.clear()


def _first_choice_text(choices: Any) -> list[str]:
    if not isinstance(choices, list):
        return []
    texts = []
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            text = choice.get("text")
            if text is None:
                text = (choice.get("message") or choice.get("delta") or {}).get("content")
            if isinstance(text, str):
                texts.append(text)
    return texts


def _decoded(events: list[bytes]) -> list[Any]:
    """Each event's JSON value (None where it is not JSON), decoded together."""
    try:
        values = json.loads(b"[" + b",".join(events) + b"]")
        if isinstance(values, list) and len(values) == len(events):
            return values
    except ValueError:
        pass
    return [_loads_or_none(event) for event in events]


def _loads_or_none(event: bytes) -> Any:
    try:
        return json.loads(event)
    except ValueError:
        return None
