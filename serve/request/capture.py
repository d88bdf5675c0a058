"""Capture at the gateway: a record of each served request for the capture store, and feedback lookups.

The request path only ever calls `Capture.watch` (cheap: it marks the `Call` to keep its answer
text) and, when the call closes, `CaptureWriter.submit`, which samples, never blocks and never
raises; the writer's own thread redacts and stores. So a slow, full or broken capture database
costs captured records, never a request.

What a record holds: `alias` is the name the client sent as `model` (an alias, `adapter@N` or the
base model), `version` the version that answered (`adapter@N`, or `base`), `prompt` the prompt as
sent (a chat's `messages` as JSON; several prompts or token ids as JSON), `answer` the first
choice's text (a stream's deltas joined), latency from receipt to last byte, the engine's token
counts, and how it ended (ok, error, or cancelled when the client went away).

Only requests that resolved to a model are captured: a bad key or an unknown model has nothing to
learn from, and capturing it would let anyone fill the database.
"""

from __future__ import annotations

import asyncio
import json
import threading

from tuneloop.monitoring.capture import (
    CapturedRequest,
    CaptureStatus,
    CaptureStore,
    CaptureWriter,
    Feedback,
    FeedbackIn,
    RequestRecord,
)
from tuneloop.monitoring.capture.redact import bounded
from tuneloop.platform import settings
from tuneloop.serve.config import CaptureConfig
from tuneloop.serve.protocol import SamplingFields
from tuneloop.serve.request.call import Call

FRESH_RECORD_WAIT_S = 2.0
"""How long a feedback lookup waits for the writer to store a request it has not written yet."""


class Capture:
    """One replica's capture writer, and the store feedback is checked against (opened on first use)."""

    def __init__(self, config: CaptureConfig) -> None:
        self.config = config
        self.writer = CaptureWriter(
            config.db_url or None,
            enabled=config.enabled,
            sample_rate=config.sample_rate,
            redact=config.redact,
        )
        self._store: CaptureStore | None = None
        # Cut here as well as in the writer, so a call never keeps megabytes of prompt until it closes.
        self._max_chars = settings.TUNELOOP_CAPTURE_MAX_FIELD_CHARS.get()
        self._store_lock = threading.Lock()

    @property
    def on(self) -> bool:
        """Whether any request can be captured (capture enabled, sample rate above 0)."""
        return self.config.enabled and self.config.sample_rate > 0

    def watch(self, call: Call, parsed: SamplingFields, key_id: int | None = None) -> None:
        """Have `call` submitted for capture when it closes (the writer decides if it is sampled);
        `key_id`: the registry id of the requesting key, the only key allowed to give feedback on it
        besides admin keys."""
        prompt = bounded(prompt_text(parsed, self._max_chars), self._max_chars)
        call.prompt, call.capturing, call.on_close = prompt, True, self.submit
        call.key_id = key_id

    def submit(self, call: Call) -> None:
        """Hand the closed call to the writer; never blocks, never raises."""
        usage = call.usage or {}
        ended = call.ended if call.ended is not None else call.started
        record = RequestRecord(
            request_id=call.request_id,
            alias=call.requested,
            version=call.version,
            prompt=call.prompt,
            answer=bounded(call.answer_text(), self._max_chars),
            latency_s=max(0.0, ended - call.started),
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")),
            status=status_of(call.status),
            key_id=call.key_id,
        )
        self.writer.submit(record)

    async def find(self, request_id: str) -> CapturedRequest | None:
        """The captured request `request_id`, waiting briefly for one the writer still holds."""
        return await asyncio.to_thread(self._find, request_id)

    async def add_feedback(self, feedback: FeedbackIn, *, key_id: int | None, by_admin: bool) -> Feedback:
        """Store `feedback` given by key `key_id`, replacing earlier feedback on the same request; its
        corrected answer goes through the redaction hook first, like captured prompts and answers."""

        def store() -> Feedback:
            clean = feedback
            if feedback.corrected_answer is not None:
                redacted = self.writer.redact(feedback.corrected_answer)
                clean = feedback.model_copy(update={"corrected_answer": redacted})
            return self._open().add_feedback(clean, key_id=key_id, by_admin=by_admin)

        return await asyncio.to_thread(store)

    async def close(self) -> None:
        """Write what is queued (bounded), stop the writer's thread, close the feedback store."""
        await asyncio.to_thread(self.writer.close)
        if self._store is not None:
            self._store.close()

    def _find(self, request_id: str) -> CapturedRequest | None:
        store = self._open()
        found = store.get(request_id)
        if found is None and self.writer.flush(FRESH_RECORD_WAIT_S):
            found = store.get(request_id)
        return found

    def _open(self) -> CaptureStore:
        # Opened lazily and retried on every call: a capture database down at start-up must not
        # stop the gateway, only feedback until it is back.
        with self._store_lock:
            if self._store is None:
                self._store = CaptureStore(self.config.db_url or None)
            return self._store


def prompt_text(parsed: SamplingFields, limit: int = 0) -> str:
    """The prompt as captured: text as sent; chats, several prompts or token ids as JSON.

    With `limit`, only about that many characters are built (the caller cuts exactly): a chat of
    many long messages is not serialised whole only to be thrown away.
    """
    messages = getattr(parsed, "messages", None)
    if isinstance(messages, list):
        dumped, size = [], 0
        for message in messages:
            dumped.append(message.model_dump(mode="json", exclude_none=True))
            content = dumped[-1].get("content")
            size += len(content) if isinstance(content, str) else len(str(content))
            if limit and size > limit:
                break
        return json.dumps(dumped, ensure_ascii=False)
    prompt = getattr(parsed, "prompt", "")
    if isinstance(prompt, str):
        return prompt
    if limit and isinstance(prompt, list) and len(prompt) > limit:
        prompt = prompt[:limit]
    return json.dumps(prompt)


def status_of(http_status: int) -> CaptureStatus:
    if http_status == 200:
        return CaptureStatus.OK
    if http_status == 499:
        return CaptureStatus.CANCELLED
    return CaptureStatus.ERROR


def _count(value: object) -> int | None:
    return value if isinstance(value, int) else None
