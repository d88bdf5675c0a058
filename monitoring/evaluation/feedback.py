"""Recent labelled traffic: captured requests whose feedback says what the answer should have been.

Feedback with a `corrected_answer` makes that answer the reference; feedback that marks the answer
right (a label in GOOD_LABELS, or a rating of 4 or 5) makes the captured answer the reference. Other
feedback says only that something was wrong, not what is right, so it labels nothing. Chats were
captured as their messages in JSON and become chat examples; plain prompts become prompt/completion.
"""

from __future__ import annotations

import json
from datetime import datetime

from tuneloop.monitoring.capture import CapturedRequest, CaptureStore, Feedback
from tuneloop.train.data.formats import Example, Message

GOOD_LABELS = frozenset({"good", "correct", "right", "ok"})


def reference_of(request: CapturedRequest, feedback: Feedback) -> str | None:
    """The right answer this feedback gives, or None when it gives none."""
    if feedback.corrected_answer:
        return feedback.corrected_answer
    if (feedback.label or "").lower() in GOOD_LABELS or (feedback.rating or 0) >= 4:
        return request.answer
    return None


def to_example(request: CapturedRequest, answer: str, line: int) -> Example:
    """The captured prompt with `answer` as a training-format example (source: the request id)."""
    messages = _messages(request.prompt)
    source = f"capture:{request.request_id}"
    if messages is not None:
        turns = (*messages, Message(role="assistant", content=answer))
        return Example(format="chat", line=line, source=source, messages=turns)
    return Example(
        format="prompt_completion", line=line, source=source, prompt=request.prompt, completion=answer
    )


def labelled_examples(store: CaptureStore, alias: str, since: datetime | None = None) -> list[Example]:
    """One example per captured request of `alias` with usable feedback (its latest), oldest first."""
    latest: dict[str, tuple[CapturedRequest, str]] = {}
    for request, feedback in store.with_feedback(alias, since=since):
        answer = reference_of(request, feedback)
        if answer is not None:
            latest.pop(request.request_id, None)  # re-insert: order by the newest feedback
            latest[request.request_id] = (request, answer)
    return [to_example(request, answer, i) for i, (request, answer) in enumerate(latest.values(), 1)]


def _messages(prompt: str) -> tuple[Message, ...] | None:
    if not prompt.startswith("["):
        return None
    try:
        raw = json.loads(prompt)
    except ValueError:
        return None
    if not isinstance(raw, list) or not raw:
        return None
    turns = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            return None
        turns.append(Message(role=str(item.get("role", "user")), content=item["content"]))
    return tuple(turns)
