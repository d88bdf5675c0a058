"""The gateway's side of capture without an engine: the record a closed request becomes, and that
neither sampling nor a broken database reaches the request path (test_gateway_prompt_tuned.py has
the same through the real gateway)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from tuneloop.monitoring.capture import CaptureStore
from tuneloop.serve.chat_completions.protocol import ChatCompletionRequest
from tuneloop.serve.completions.protocol import CompletionRequest
from tuneloop.serve.config import CaptureConfig
from tuneloop.serve.request.call import READ_EVENTS, Call
from tuneloop.serve.request.capture import Capture, prompt_text


def test_prompts_are_captured_as_sent() -> None:
    assert prompt_text(CompletionRequest(model="m", prompt="hi there")) == "hi there"
    assert prompt_text(CompletionRequest(model="m", prompt=[[1, 2], [3]])) == "[[1, 2], [3]]"
    chat = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "é?"}]}
    )
    assert json.loads(prompt_text(chat)) == [{"role": "user", "content": "é?"}]


def _closed_call(capture: Capture, request_id: str, status: int = 200) -> Call:
    call = Call(endpoint="completions", request_id=request_id, requested="bot", version="bot@2")
    capture.watch(call, CompletionRequest(model="bot", prompt="Call 555 0100 2000"))
    call.keep_answer([{"index": 0, "text": "hel"}, {"index": 1, "text": "other choice"}])
    call.keep_answer([{"index": 0, "delta": {"content": "lo"}}])
    call.usage = {"prompt_tokens": 4, "completion_tokens": 2}
    call.status = status
    call.close()
    return call


def test_a_closed_call_becomes_one_redacted_record(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'capture.db'}"
    redact = "tuneloop.monitoring.capture.redact:mask_pii"
    capture = Capture(CaptureConfig(enabled=True, sample_rate=1.0, db_url=url, redact=redact))
    _closed_call(capture, "cmpl-1")
    _closed_call(capture, "cmpl-2", status=499)
    _closed_call(capture, "cmpl-3", status=503)
    assert capture.writer.flush(10)
    store = CaptureStore(url)
    row = store.get("cmpl-1")
    assert row is not None
    assert (row.alias, row.version, row.prompt, row.answer) == ("bot", "bot@2", "Call <number>", "hello")
    assert (row.prompt_tokens, row.completion_tokens, row.status) == (4, 2, "ok") and row.latency_s >= 0
    assert [store.get(i).status for i in ("cmpl-2", "cmpl-3")] == ["cancelled", "error"]  # type: ignore[union-attr]
    store.close()
    close(capture)


def test_capture_off_or_broken_never_reaches_the_request(tmp_path: Path) -> None:
    off = Capture(CaptureConfig(enabled=False, db_url=f"sqlite:///{tmp_path / 'off.db'}"))
    assert not off.on
    # A database that can never be opened (its folder is a file): submit still returns at once.
    (tmp_path / "file").write_text("")
    broken = Capture(CaptureConfig(enabled=True, db_url=f"sqlite:///{tmp_path / 'file' / 'capture.db'}"))
    started = time.monotonic()
    for i in range(200):
        _closed_call(broken, f"cmpl-{i}")
    assert time.monotonic() - started < 1.0
    assert broken.writer.flush(10) and broken.writer.stats.failed == 200
    close(broken)
    close(off)
    assert not (tmp_path / "off.db").exists()


def close(capture: Capture) -> None:
    asyncio.run(capture.close())


def test_stream_events_kept_whole_are_read_in_order_with_text_parts() -> None:
    call = Call(endpoint="completions", capturing=True)
    call.keep_event(b'{"choices":[{"index":0,"text":"a\\"b"},{"index":1,"text":"x"}]}')
    call.keep_answer([{"index": 0, "text": "-"}])
    call.keep_event(b'{"choices":[{"index":0,"delta":{"content":"c"}}]}')
    call.keep_event(b"not json")  # one broken event costs its own text only
    call.keep_event(b'{"choices":[]}')
    call.keep_event(b'{"choices":[{"index":0,"text":"d"}]}')
    assert call.answer_text() == 'a"b-cd'
    # A long stream is read as it goes: no more than READ_EVENTS events wait undecoded.
    long = Call(endpoint="completions", capturing=True)
    for _ in range(READ_EVENTS):
        long.keep_event(b'{"choices":[{"index":0,"text":"x"}]}')
    assert long.answer == ["x"] * READ_EVENTS
    off = Call(endpoint="completions")
    off.keep_event(b'{"choices":[{"index":0,"text":"a"}]}')
    assert off.answer == [] and off.answer_text() == ""
