"""Evaluation suites run against the live gateway: what users get, scored per alias.

A *suite* is a named set of labelled examples for one alias: its golden set (`<alias>.jsonl` under
TUNELOOP_EVAL_GOLDEN_DIR, in a training data format), or the held-out test split of the training
job behind the live version, or the recent labelled feedback. `evaluate` sends every example to the
gateway through the official openai client and scores the answers (exact match, token F1) and, where
the gateway echoes prompt log-probabilities, the loss and perplexity of the reference answers.
`run_suite` records the result in the registry and the evaluation gauges.
"""

from tuneloop.monitoring.evaluation.feedback import labelled_examples
from tuneloop.monitoring.evaluation.runner import EvalResult, evaluate, record, run_suite
from tuneloop.monitoring.evaluation.scorers import SCORERS, get_scorer
from tuneloop.monitoring.evaluation.suite import Suite, golden_suite, suites_for, test_split_suite

__all__ = [
    "SCORERS",
    "EvalResult",
    "Suite",
    "evaluate",
    "get_scorer",
    "golden_suite",
    "labelled_examples",
    "record",
    "run_suite",
    "suites_for",
    "test_split_suite",
]
