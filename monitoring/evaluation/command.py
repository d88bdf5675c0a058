"""`tuneloop eval run`: evaluate aliases against the live gateway now (the CronJob's command)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.platform import settings
from tuneloop.platform.errors import ConfigError

if TYPE_CHECKING:
    from openai import OpenAI

log = logging.getLogger(__name__)


def gateway_client(gateway: str | None = None, key: str | None = None) -> OpenAI:
    """The official openai client on the gateway's /v1, with the evaluation's admin key."""
    from openai import OpenAI

    secret = key or settings.TUNELOOP_EVAL_KEY.get()
    if not secret:
        raise ConfigError(
            "evaluation needs an admin gateway key: pass --key or set TUNELOOP_EVAL_KEY "
            "(create one with `tuneloop keys create --admin`)"
        )
    url = (gateway or settings.TUNELOOP_GATEWAY_URL.get()).rstrip("/")
    base = url if url.endswith("/v1") else url + "/v1"
    return OpenAI(base_url=base, api_key=secret, max_retries=2, timeout=120)


def eval_run(
    alias: str | None = None,
    golden: Path | None = None,
    gateway: str | None = None,
    key: str | None = None,
    json: bool = False,
) -> int:
    """Evaluate aliases on their golden sets and test splits through the live gateway; record results.

    Every result goes to the registry (`tuneloop adapters history`) and to the tuneloop_eval_score
    gauge. Aliases without any suite are reported and skipped.

    Args:
        alias: Evaluate only this alias (default: every alias in the registry).
        golden: Golden-set JSONL to use instead of TUNELOOP_EVAL_GOLDEN_DIR/<alias>.jsonl (with --alias).
        gateway: Gateway URL (default: TUNELOOP_GATEWAY_URL).
        key: Admin gateway key (default: TUNELOOP_EVAL_KEY).
        json: Print a JSON list, one object per alias and suite (alias, model, suite, examples,
            scores, skipped) or per skipped alias (alias, skipped), instead of lines.
    """
    from tuneloop.monitoring.evaluation.runner import run_suite
    from tuneloop.monitoring.evaluation.suite import suites_for
    from tuneloop.platform.output import print_json
    from tuneloop.platform.registry import Registry

    if golden is not None and alias is None:
        raise ConfigError("--golden is one alias's golden set: give --alias too")
    registry = Registry()
    aliases = [alias] if alias else sorted(registry.aliases())
    rows: list[dict[str, object]] = []
    if not aliases:
        print_json(rows) if json else print("no aliases to evaluate")
        return 0
    client = gateway_client(gateway, key)
    limit = settings.TUNELOOP_EVAL_MAX_EXAMPLES.get()
    max_tokens = settings.TUNELOOP_EVAL_MAX_TOKENS.get()
    for name in aliases:
        suites = suites_for(registry, name, golden)
        if not suites:
            why = (
                f"no golden set ({settings.TUNELOOP_EVAL_GOLDEN_DIR.get()}/{name}.jsonl) "
                "and no test split reachable"
            )
            rows.append({"alias": name, "skipped": why})
            if not json:
                print(f"{name}: {why}: skipped")
            continue
        for suite in suites:
            if len(suite.examples) > limit:
                suite = type(suite)(suite.name, suite.examples[:limit], suite.source)
            result = run_suite(registry, client, name, suite, max_tokens=max_tokens)
            rows.append(
                {
                    "alias": name,
                    "model": result.model,
                    "suite": suite.name,
                    "examples": result.n,
                    "scores": result.scores,
                    "skipped": result.skipped,
                }
            )
            if json:
                continue
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(result.scores.items()))
            print(f"{name} {result.model} {suite.name} ({result.n} examples): {shown}")
            for metric, why in result.skipped.items():
                print(f"    {metric} skipped: {why}")
    if json:
        print_json(rows)
    return 0
