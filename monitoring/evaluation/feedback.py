"""Recent labelled traffic: captured requests whose feedback says what the answer should have been.

`correctness` reads one feedback as "the answer was right / wrong / does not say", the sample of the
feedback-accuracy drift check. For retraining and the gate, feedback with a `corrected_answer` makes
that answer the reference; feedback that marks the answer
right (a label in GOOD_LABELS, or a rating of 4 or 5) makes the captured answer the reference. Other
feedback says only that something was wrong, not what is right, so it labels nothing. Chats were
captured as their messages in JSON and become chat examples; plain prompts become prompt/completion.

Only trusted feedback counts, in training data, gate sets and the feedback-accuracy sample alike:
`TUNELOOP_FEEDBACK_TRUST` names whose (`requester` by default: the key that made the request), so
another key cannot steer retraining by judging answers it did not get (`trusted`).
"""

from __future__ import annotations

import json
from datetime import datetime

from tuneloop.monitoring.capture import CapturedRequest, CaptureStore, Feedback
from tuneloop.platform import settings
from tuneloop.platform.answers import exact_match
from tuneloop.platform.data.formats import Example, Message

GOOD_LABELS = frozenset({"good", "correct", "right", "ok"})
BAD_LABELS = frozenset({"bad", "wrong", "incorrect"})


def trusted(request: CapturedRequest, feedback: Feedback, trust: frozenset[str] | None = None) -> bool:
    """Whether `feedback` may count, by who gave it (`trust`: names of TUNELOOP_FEEDBACK_TRUST,
    read from the settings when None): `requester` when the key that made the request gave it,
    `admin` when an admin key did, `any` always. Rows without key ids (stored before keys were
    recorded) are trusted only under `any`."""
    trust = settings.TUNELOOP_FEEDBACK_TRUST.get() if trust is None else trust
    if "any" in trust:
        return True
    if "admin" in trust and feedback.by_admin:
        return True
    return "requester" in trust and feedback.key_id is not None and feedback.key_id == request.key_id


def correctness(request: CapturedRequest, feedback: Feedback) -> bool | None:
    """Whether the feedback says the captured answer was right; None when it does not say.

    A corrected answer decides by exact match (platform/answers.py) with the captured answer; then a
    label in GOOD_LABELS or BAD_LABELS; then a rating (4-5 right, 1-2 wrong, 3 undecided).
    """
    if feedback.corrected_answer:
        return exact_match(request.answer, feedback.corrected_answer) == 1.0
    label = (feedback.label or "").lower()
    if label in GOOD_LABELS or label in BAD_LABELS:
        return label in GOOD_LABELS
    if feedback.rating is not None and feedback.rating != 3:
        return feedback.rating >= 4
    return None


def judged_with_times(store: CaptureStore, alias: str, version: str) -> list[tuple[datetime, bool]]:
    """Right/wrong per answer of `version` served under `alias` whose trusted feedback says which
    (its latest feedback counts), with that feedback's time, oldest first: the sample of the
    feedback drift check."""
    latest: dict[str, tuple[datetime, bool]] = {}
    trust = settings.TUNELOOP_FEEDBACK_TRUST.get()
    for request, feedback in store.with_feedback(alias):
        if request.version != version or not trusted(request, feedback, trust):
            continue
        verdict = correctness(request, feedback)
        if verdict is not None:
            latest.pop(request.request_id, None)  # re-insert: order by the newest feedback
            latest[request.request_id] = (feedback.created_at, verdict)
    return list(latest.values())


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
    """One example per captured request of `alias` with usable, trusted feedback (its latest), oldest
    first."""
    return [example for _, example in labelled_with_times(store, alias, since)]


def labelled_with_times(
    store: CaptureStore, alias: str, since: datetime | None = None
) -> list[tuple[datetime, Example]]:
    """`labelled_examples` with the time of the feedback that gave each answer."""
    latest: dict[str, tuple[CapturedRequest, str, datetime]] = {}
    trust = settings.TUNELOOP_FEEDBACK_TRUST.get()
    for request, feedback in store.with_feedback(alias, since=since):
        if not trusted(request, feedback, trust):
            continue
        answer = reference_of(request, feedback)
        if answer is not None:
            latest.pop(request.request_id, None)  # re-insert: order by the newest feedback
            latest[request.request_id] = (request, answer, feedback.created_at)
    return [
        (at, to_example(request, answer, i)) for i, (request, answer, at) in enumerate(latest.values(), 1)
    ]


def captured_prompt(example: Example) -> str:
    """The question of `example` as the gateway captures it (serve/request/capture.py `prompt_text`): chats as
    the JSON of every turn but the answer, prompts as they are, so drift checks compare like with like."""
    if example.format == "chat":
        turns = [{"role": m.role, "content": m.content} for m in example.messages[:-1]]
        return json.dumps(turns, ensure_ascii=False)
    return (example.prompt if example.format == "prompt_completion" else example.text) or ""


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
