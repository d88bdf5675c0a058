"""Run a suite against the live gateway with the official openai client, score it, record it.

Answers are greedy (temperature 0) with at most TUNELOOP_EVAL_MAX_TOKENS tokens, asked
TUNELOOP_EVAL_CONCURRENCY at a time: chat examples go to
/v1/chat/completions with every turn but the last, prompt/completion examples to /v1/completions.
The model sent is the version the alias points at (`adapter@N`), so a promotion halfway through a
run cannot mix two versions' answers into one score.

Loss and perplexity come from the engine's own log-probabilities of the reference answer: the
gateway passes `echo` and `logprobs` through to vLLM's /v1/completions, so prompt + answer is sent
with `echo=true, logprobs=0, max_tokens=1` and the answer tokens (those starting at or after the
prompt's end) are averaged, token-weighted over the suite. Unlike training's loss it leaves out the
end-of-turn token and tokenises prompt and answer together. Chat examples have no loss: the gateway
applies chat templates only on /v1/chat/completions, which returns no prompt log-probabilities.
Raw text examples (no answer) are scored on every token after the first.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tuneloop.monitoring import metrics
from tuneloop.monitoring.evaluation.judge import METRIC as JUDGE
from tuneloop.monitoring.evaluation.scorers import SCORERS, get_scorer
from tuneloop.monitoring.evaluation.suite import Suite
from tuneloop.platform import settings
from tuneloop.platform.data.formats import Example, reference_answer
from tuneloop.platform.errors import NotFoundError

if TYPE_CHECKING:
    from openai import OpenAI

    from tuneloop.platform.registry import Registry

log = logging.getLogger(__name__)
DEFAULT_METRICS = ("exact_match", "token_f1")


@dataclass
class EvalResult:
    """Scores of one model on one suite; `skipped` names each metric left out and why."""

    suite: str
    model: str
    n: int
    scores: dict[str, float] = field(default_factory=dict)
    per_example: dict[str, list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def as_metrics(self) -> dict[str, Any]:
        """What the registry stores: scores, example count, skipped metrics and their reasons."""
        out: dict[str, Any] = {name: value for name, value in self.scores.items() if math.isfinite(value)}
        out["examples"] = self.n
        if self.skipped:
            out["skipped"] = dict(self.skipped)
        return out


def evaluate(
    client: OpenAI,
    model: str,
    examples: Sequence[Example],
    *,
    suite: str = "adhoc",
    max_tokens: int = 64,
    scorers: Sequence[str] = DEFAULT_METRICS,
    loss: bool = True,
    judge: str | None = None,
) -> EvalResult:
    """Answer every example with `model` through the gateway and score the answers (and have
    `judge`, another model, grade them: monitoring/evaluation/judge.py)."""
    started = time.monotonic()
    result = EvalResult(suite=suite, model=model, n=len(examples))
    funcs = {name: get_scorer(name) for name in scorers}
    answered = [(ex, ref) for ex in examples if (ref := reference_answer(ex)) is not None]
    if not answered:
        result.skipped.update({name: "no example has a reference answer" for name in funcs})
    for name in funcs:
        result.per_example.setdefault(name, [])
    # A few requests at once: the engine batches them, and the order of the scores is kept.
    with ThreadPoolExecutor(settings.TUNELOOP_EVAL_CONCURRENCY.get()) as pool:
        predictions = list(pool.map(lambda pair: _answer(client, model, pair[0], max_tokens), answered))
    for (_, reference), prediction in zip(answered, predictions, strict=True):
        for name, func in funcs.items():
            result.per_example[name].append(func(prediction, reference))
    if judge and answered:
        _add_judge(client, judge, answered, predictions, result)
    for name, values in result.per_example.items():
        if values:
            result.scores[name] = sum(values) / len(values)
    if loss:
        _add_loss(client, model, examples, result)
    result.seconds = time.monotonic() - started
    return result


def record(registry: Registry, alias: str, result: EvalResult) -> None:
    """Store the result under its version in the registry and set the alias's evaluation gauges."""
    registry.add_evaluation(result.model, result.suite, result.as_metrics())
    for name, value in result.scores.items():
        if name in SCORERS or name == JUDGE:  # the 0-1, higher-is-better scores the gauge is for
            metrics.EVAL_SCORE.labels(alias, result.model, result.suite, name).set(value)


def run_suite(
    registry: Registry, client: OpenAI, alias: str, suite: Suite, *, max_tokens: int = 64
) -> EvalResult:
    """Evaluate the version `alias` points at on `suite`, and record the result."""
    ref = registry.aliases().get(alias)
    if ref is None:
        raise NotFoundError(f"no alias named {alias!r}; see `tuneloop adapters list`")
    judge = settings.TUNELOOP_EVAL_JUDGE.get() or None
    result = evaluate(client, ref, suite.examples, suite=suite.name, max_tokens=max_tokens, judge=judge)
    record(registry, alias, result)
    return result


def _answer(client: OpenAI, model: str, example: Example, max_tokens: int) -> str:
    if example.format == "chat":
        turns: Any = [m.turn() for m in example.messages[:-1]]
        chat = client.chat.completions.create(
            model=model, messages=turns, temperature=0.0, max_tokens=max_tokens
        )
        return chat.choices[0].message.content or ""
    done = client.completions.create(
        model=model, prompt=example.prompt or "", temperature=0.0, max_tokens=max_tokens
    )
    return done.choices[0].text


def _add_judge(
    client: OpenAI,
    judge: str,
    answered: Sequence[tuple[Example, str]],
    predictions: Sequence[str],
    result: EvalResult,
) -> None:
    import openai

    from tuneloop.monitoring.evaluation import judge as judging

    graded = [(ex, ref, pred) for (ex, ref), pred in zip(answered, predictions, strict=True)]
    try:
        scores = judging.grade(client, judge, graded, concurrency=settings.TUNELOOP_EVAL_CONCURRENCY.get())
    except openai.APIError as exc:
        result.skipped[judging.METRIC] = f"the judge {judge} could not grade: {exc}"
        log.warning("%s: %s", result.model, result.skipped[judging.METRIC])
        return
    result.per_example[judging.METRIC] = scores


class _NoLogprobs(Exception):
    """The gateway did not return prompt log-probabilities for this model."""


def _add_loss(client: OpenAI, model: str, examples: Sequence[Example], result: EvalResult) -> None:
    import openai

    total, count, chats = 0.0, 0, 0
    for example in examples:
        if example.format == "chat":
            chats += 1
            continue
        prompt = example.prompt or "" if example.format == "prompt_completion" else ""
        answer = example.completion or "" if example.format == "prompt_completion" else example.text or ""
        try:
            logprobs = _answer_logprobs(client, model, prompt, answer)
        except (_NoLogprobs, openai.BadRequestError) as exc:
            result.skipped["loss"] = f"the gateway returned no prompt log-probabilities for {model}: {exc}"
            return
        total -= sum(logprobs)
        count += len(logprobs)
    if not count:
        why = "chat examples only: /v1/chat/completions returns no prompt log-probabilities"
        result.skipped["loss"] = why if chats else "no answer tokens to score"
        return
    result.scores["loss"] = total / count
    result.scores["perplexity"] = math.exp(min(total / count, 700.0))
    if chats:
        result.skipped["loss_chat"] = f"{chats} chat examples left out of loss (no prompt log-probabilities)"


def _answer_logprobs(client: OpenAI, model: str, prompt: str, answer: str) -> list[float]:
    """Log-probabilities of the tokens of `answer` following `prompt`, from the engine's echo."""
    done = client.completions.create(
        model=model, prompt=prompt + answer, echo=True, logprobs=0, max_tokens=1, temperature=0.0
    )
    found = done.choices[0].logprobs
    if found is None or found.token_logprobs is None or found.text_offset is None:
        raise _NoLogprobs("no logprobs in the answer")
    generated = done.usage.completion_tokens if done.usage else 1
    echoed = len(found.token_logprobs) - generated
    start = len(prompt)
    values = [
        lp
        for lp, offset in zip(found.token_logprobs[:echoed], found.text_offset[:echoed], strict=True)
        if lp is not None and offset >= start
    ]
    if answer and not values:
        raise _NoLogprobs("the echoed prompt carries no log-probabilities")
    return values
