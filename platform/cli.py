"""The `tuneloop` command: a table of subcommand names mapped to typed functions.

Each function's signature becomes its arguments (no default: positional; a default: `--option`;
keyword-only without a default: a required `--option`),
its docstring's first paragraph becomes `--help`, and its `Args:` lines become the arguments'
help. Functions are named as "module:function" and imported only when needed, so `tuneloop --help`
never imports torch, ray or vllm. Errors meant for users (TuneloopError) print as one line.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

from tuneloop.platform import settings
from tuneloop.platform.errors import TuneloopError

PROG = "tuneloop"

# name -> "module:function". README.md's command table is checked against this one by a test.
COMMANDS: dict[str, str] = {
    "version": "tuneloop.platform.commands:version",
    "env": "tuneloop.platform.commands:env",
    "status": "tuneloop.monitoring.status:status",
    "db upgrade": "tuneloop.platform.commands:db_upgrade",
    "models pull": "tuneloop.platform.commands:models_pull",
    "models list": "tuneloop.platform.commands:models_list",
    "adapters list": "tuneloop.platform.commands:adapters_list",
    "adapters import": "tuneloop.platform.commands:adapters_import",
    "adapters export": "tuneloop.platform.commands:adapters_export",
    "adapters promote": "tuneloop.platform.commands:adapters_promote",
    "adapters rollback": "tuneloop.platform.commands:adapters_rollback",
    "adapters history": "tuneloop.platform.commands:adapters_history",
    "keys create": "tuneloop.platform.commands:keys_create",
    "keys list": "tuneloop.platform.commands:keys_list",
    "keys revoke": "tuneloop.platform.commands:keys_revoke",
    "serve": "tuneloop.serve.cli:serve",
    "ray up": "tuneloop.platform.ray.head:ray_up",
    "ray down": "tuneloop.platform.ray.head:ray_down",
    "ray status": "tuneloop.platform.ray.head:ray_status",
    "ray env": "tuneloop.platform.ray.head:ray_env",
    "jobs submit": "tuneloop.platform.ray.submit:jobs_submit",
    "jobs status": "tuneloop.platform.ray.submit:jobs_status",
    "jobs logs": "tuneloop.platform.ray.submit:jobs_logs",
    "jobs stop": "tuneloop.platform.ray.submit:jobs_stop",
    "jobs list": "tuneloop.platform.ray.submit:jobs_list",
    "jobs metrics": "tuneloop.platform.curves:jobs_metrics",
    "train": "tuneloop.train.command:train",
    "data check": "tuneloop.train.check:data_check",
    "eval run": "tuneloop.monitoring.evaluation.command:eval_run",
    "control": "tuneloop.monitoring.control.command:control",
    "demo": "tuneloop.demo.run:demo",
}


def load(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    func: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return func


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _doc(func: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The summary paragraph and the per-argument help of a Google-style docstring."""
    doc = inspect.getdoc(func) or ""
    summary, _, rest = doc.partition("\n\nArgs:\n")
    args: dict[str, str] = {}
    for line in rest.splitlines():
        name, sep, text = line.strip().partition(":")
        if sep and name.isidentifier():
            args[name] = text.strip()
    return summary.strip(), args


def _add_arguments(parser: argparse.ArgumentParser, func: Callable[..., Any]) -> None:
    hints = typing.get_type_hints(func)
    _, arg_help = _doc(func)
    for name, param in inspect.signature(func).parameters.items():
        hint = hints.get(name, str)
        kwargs: dict[str, Any] = {"help": arg_help.get(name)}
        optional = types.NoneType in typing.get_args(hint)
        if optional:
            hint = next(a for a in typing.get_args(hint) if a is not types.NoneType)
        if typing.get_origin(hint) is Literal:
            kwargs["choices"] = list(typing.get_args(hint))
        elif hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is list:
            kwargs["type"] = typing.get_args(hint)[0]
            kwargs["nargs"] = "*" if param.default is not inspect.Parameter.empty else "+"
        else:
            kwargs["type"] = hint if hint in (int, float, Path) else str
        if param.default is inspect.Parameter.empty and param.kind is inspect.Parameter.KEYWORD_ONLY:
            parser.add_argument("--" + name.replace("_", "-"), dest=name, required=True, **kwargs)
        elif param.default is inspect.Parameter.empty:
            parser.add_argument(name, **kwargs)
        else:
            kwargs["default"] = param.default
            if param.default not in (None, False) and kwargs["help"]:
                kwargs["help"] += f" (default: {param.default})"
            flag = "--" + name.replace("_", "-")
            parser.add_argument(flag, dest=name, **kwargs)


def build_parser(commands: dict[str, str] = COMMANDS) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Fine-tune open LLMs on Ray, serve them with vLLM, retrain on drift."
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="Python logging level (default: TUNELOOP_LOG_LEVEL)",
    )
    groups: dict[str, argparse._SubParsersAction[_Parser]] = {}
    top = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    groups[""] = top
    for name, target in commands.items():
        func = load(target)
        summary, _ = _doc(func)
        *group_words, leaf = name.split()
        key = ""
        for word in group_words:
            parent_key, key = key, f"{key} {word}".strip()
            if key not in groups:
                sub = groups[parent_key].add_parser(word, help=f"{word} commands")
                groups[key] = sub.add_subparsers(
                    dest=f"{key} command", metavar="COMMAND", parser_class=_Parser
                )
                groups[key].required = True
        first_line = summary.splitlines()[0] if summary else ""
        cmd = groups[key].add_parser(
            leaf, help=first_line, description=summary, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        _add_arguments(cmd, func)
        cmd.set_defaults(_target=target)
    top.required = True
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    level = args.pop("log_level") or settings.TUNELOOP_LOG_LEVEL.get()
    # Our own loggers at the chosen level; libraries (alembic, httpx, ...) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tuneloop").setLevel(level.upper())
    target = args.pop("_target")
    kwargs = {k: v for k, v in args.items() if k != "command" and not k.endswith(" command")}
    try:
        result = load(target)(**kwargs)
        sys.stdout.flush()  # a reader that left early (`| head`) shows up here, not at exit
    except BrokenPipeError:
        # Nobody reads the rest: stop quietly, as `cat` does, and keep the exit flush from failing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a writer stopped by SIGPIPE
    except TuneloopError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
