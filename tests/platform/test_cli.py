"""The `tuneloop` console script as a user runs it: help, errors as one line, the README's table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from tuneloop.platform.cli import COMMANDS, build_parser, load
from tuneloop.platform.registry import db

ROOT = Path(__file__).resolve().parents[2]
TUNELOOP = str(Path(sys.executable).with_name("tuneloop"))


def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(home), "TUNELOOP_HOME": str(home / "tl")}
    return subprocess.run([TUNELOOP, *args], capture_output=True, text=True, env=env, timeout=120)


def test_help_lists_every_command(tmp_path: Path) -> None:
    out = run("--help", home=tmp_path)
    assert out.returncode == 0
    for name in COMMANDS:
        assert name.split()[0] in out.stdout
    sub = run("models", "--help", home=tmp_path)
    assert "pull" in sub.stdout and "list" in sub.stdout


def test_readme_command_table_matches_the_cli() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `tuneloop ([a-z ]+?)(?: [A-Z\[<-].*?)?` \|", readme, flags=re.M))
    assert documented == set(COMMANDS)


def test_every_command_has_a_docstring_and_typed_arguments() -> None:
    build_parser()  # imports every target and builds every sub-parser
    for target in COMMANDS.values():
        func = load(target)
        assert func.__doc__, target
        assert "return" in func.__annotations__, target


def test_version(tmp_path: Path) -> None:
    out = run("version", home=tmp_path)
    assert out.returncode == 0
    assert re.fullmatch(r"tuneloop \d+\.\d+\.\d+\n", out.stdout)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        (("models", "pull"), "the following arguments are required: name"),
        (("models", "pull", "no-such-model"), "unknown model 'no-such-model'"),
        (("db", "upgrade", "--url", "this is not a url"), "not a SQLAlchemy URL"),
        (("db", "upgrade", "--url", "nosuchdialect://x"), "cannot open registry"),
        (("--log-level", "LOUD", "version"), "invalid choice: 'LOUD'"),
        (("adapters", "import", "bot", "/no/such/folder"), "/no/such/folder is not a folder"),
        (("adapters", "promote", "bot", "1"), "no version or alias 'bot@1'"),
        (("adapters", "rollback", "bot"), "no alias named 'bot'"),
        (("keys", "create"), "give --scope ALIAS[,ALIAS...]"),
        (("serve",), "the following arguments are required: --model"),
        (("serve", "--model", "/no/such/model"), "is not a model folder"),
        (("train", "/no/such/job.yaml"), "job spec /no/such/job.yaml does not exist"),
        (("jobs", "submit", "/no/such/job.yaml"), "/no/such/job.yaml"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    out = run(*args, home=tmp_path)
    assert out.returncode != 0
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tuneloop") and expected in lines[0]
    assert "Traceback" not in out.stderr


def test_db_upgrade_creates_registry_under_home(tmp_path: Path) -> None:
    out = run("db", "upgrade", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "tl" / "registry.db").exists()
    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert f"revision {head}" in out.stdout
    listed = run("adapters", "list", home=tmp_path)
    assert listed.returncode == 0 and "no adapters yet" in listed.stdout


def test_env_prints_every_variable(tmp_path: Path) -> None:
    out = run("env", home=tmp_path)
    assert out.returncode == 0
    assert f"TUNELOOP_HOME={tmp_path / 'tl'}" in out.stdout
    assert "TUNELOOP_HOST=127.0.0.1" in out.stdout


def test_keys_list_and_revoke(tmp_path: Path) -> None:
    created = run("keys", "create", "--admin", home=tmp_path)
    assert created.returncode == 0, created.stderr
    shown = created.stdout.strip()[:10]
    listed = run("keys", "list", home=tmp_path)
    assert listed.returncode == 0 and f"{shown}..." in listed.stdout and "admin" in listed.stdout
    revoked = run("keys", "revoke", f"{shown}...", home=tmp_path)
    assert revoked.returncode == 0 and revoked.stdout.startswith(f"revoked {shown}...")
    assert "no keys" in run("keys", "list", home=tmp_path).stdout
    again = run("keys", "revoke", shown, home=tmp_path)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "no active key" in again.stderr


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path) -> None:
    """`tuneloop models list | head -0`: the pipe is closed before the command writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(tmp_path),
        "TUNELOOP_HOME": str(tmp_path / "tl"),
    }
    try:
        out = subprocess.run(
            [TUNELOOP, "models", "list"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert out.returncode == 141
    assert out.stderr == ""
