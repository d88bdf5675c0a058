"""Shared fixtures: a tiny model and LoRA adapter built offline, a real vLLM server, a real Ray head,
a real PostgreSQL cluster.

The model and adapter are built once per session (a few seconds). Servers run as subprocesses in
their own process group on free 127.0.0.1 ports, through `tuneloop.platform.procs`, and are always
stopped by that group. Heavy imports stay inside the fixtures so collecting fast tests stays fast.

`tests/platform/` must never get an `__init__.py`: with pytest's default import mode it would become
the top-level package `platform` and shadow the standard library module that torch and ray import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from helpers.postgres import PostgresServer, pid_alive, start_postgres
from helpers.servers import RayHead, VllmServer, start_ray_head, start_vllm
from helpers.tiny_model import build_random_lora, build_tiny_llama

LORA_RANK = 8


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama folder (tokenizer + chat template) that transformers and vLLM load."""
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_lora_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random rank-8 peft LoRA adapter for `tiny_model_dir` that visibly changes its outputs."""
    return build_random_lora(
        tiny_model_dir, tmp_path_factory.mktemp("adapters") / "tiny-lora", rank=LORA_RANK
    )


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder for the log files of servers started by fixtures (quoted in start-up errors)."""
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture
def vllm_factory(server_logs: Path) -> Iterator[Callable[..., VllmServer]]:
    """Start vLLM servers on demand: `vllm_factory(model_dir, **start_vllm_kwargs)`; all stop at teardown."""
    with ExitStack() as stack:

        def start(model_dir: Path, **kwargs: Any) -> VllmServer:
            return stack.enter_context(start_vllm(model_dir, server_logs, **kwargs))

        yield start


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir: Path, server_logs: Path) -> Iterator[VllmServer]:
    """The tiny model served by a real vLLM OpenAI server with runtime LoRA loading, shared per module."""
    with start_vllm(tiny_model_dir, server_logs, max_lora_rank=max(16, LORA_RANK)) as server:
        yield server
    left = server.process.leftovers()
    assert not left, f"vLLM processes left after stopping the server's process group: {left}"


@pytest.fixture(scope="session")
def ray_head(server_logs: Path) -> Iterator[RayHead]:
    """A loopback Ray head with token auth, private temp dir and free ports; stopped by its group."""
    with start_ray_head(server_logs) as head:
        yield head
    left = head.process.leftovers()
    assert not left, f"Ray processes left after stopping the head's process group: {left}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster on 127.0.0.1 (helpers/postgres.py), stopped by its PID at the end."""
    with start_postgres() as server:
        yield server
    assert not pid_alive(server.pid), f"postmaster {server.pid} still runs after stop"


@pytest.fixture(params=["sqlite", "postgresql"])
def new_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """Make URLs of fresh, empty databases, `new_db_url("registry")`, on SQLite and then on PostgreSQL.

    Tests that take it run twice; the PostgreSQL cluster starts only for the second run.
    """
    if request.param == "sqlite":
        return lambda name: f"sqlite:///{tmp_path / name}.db"
    server: PostgresServer = request.getfixturevalue("postgres")
    return lambda name: server.create_database(name.replace("-", "_"))
