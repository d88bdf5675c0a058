"""An optional judge: another alias (any model the evaluation key may call) grades each answer.

For every answered example the judge gets the question, the reference answer and the answer to
grade, and is asked, greedy, whether the graded answer is correct; the first word of its reply
decides: `yes` scores 1, anything else 0. The `judge` metric is the mean, beside exact match and
token F1, and helps where answers are free text that string metrics undervalue. Choose the judge
with TUNELOOP_EVAL_JUDGE; a judge that cannot be reached leaves the metric out with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from tuneloop.platform.answers import normalize_answer
from tuneloop.platform.data.formats import Example

if TYPE_CHECKING:
    from openai import OpenAI

METRIC = "judge"
SYSTEM = "You grade answers against a reference answer. Reply with one word: yes or no."


def question_of(example: Example) -> str:
    """What was asked: a chat's turns before the answer (user turns only), or the prompt."""
    if example.format == "chat":
        return "\n".join(m.content for m in example.messages[:-1] if m.role == "user")
    return example.prompt or ""


def grading_prompt(question: str, reference: str, answer: str) -> str:
    return (
        f"Question:\n{question}\n\nReference answer:\n{reference}\n\nAnswer to grade:\n{answer}\n\n"
        "Is the answer to grade correct?"
    )


def verdict(reply: str) -> float:
    """1.0 when the judge's reply starts with yes, else 0.0."""
    words = normalize_answer(reply).split()
    return 1.0 if words and words[0] == "yes" else 0.0


def grade(
    client: OpenAI, judge: str, graded: Sequence[tuple[Example, str, str]], *, concurrency: int = 4
) -> list[float]:
    """One score per (example, reference, answer), in order; API errors propagate."""

    def one(item: tuple[Example, str, str]) -> float:
        example, reference, answer = item
        messages: Any = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": grading_prompt(question_of(example), reference, answer)},
        ]
        out = client.chat.completions.create(model=judge, messages=messages, temperature=0.0, max_tokens=4)
        return verdict(out.choices[0].message.content or "")

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, graded))
