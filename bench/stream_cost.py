"""CPU per stream of the gateway's in-engine stream path, side by side with the engine's bare stream.

    .venv/bin/python bench/stream_cost.py [--streams 400] [--events 64] [--repeats 5]

An ASGI app streams `--events` vLLM-shaped completion events (plus the usage event and [DONE]) the
way vLLM's server does; each stream is called in-process (serve/engine/inprocess.py) and either
(a) piped straight to a sink that only keeps the messages (what the engine's own send costs), or
(b) proxied by `ProxiedStream` with capture on (id and model rewritten, first token and usage read,
the answer read from the kept events): the work the gateway adds per stream when it runs inside the
engine (`tuneloop serve --in-engine`). Process CPU time, one asyncio loop, no sockets, no engine:
this isolates the per-event path that the end-to-end benchmark (bench/serve.py) cannot resolve
through its run-to-run noise. Rounds alternate (a) and (b); the median of `--repeats` is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Message

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' vLLM event builder
from helpers.sse import vllm_event

from tuneloop.serve.engine.inprocess import InProcessSession
from tuneloop.serve.request.call import Call
from tuneloop.serve.request.proxy import RAW_SEND, ProxiedStream
from tuneloop.serve.routing.resolver import Target

TARGET = Target(
    requested="support-bot", engine_model="base", kind="lora", alias="support-bot", version="sb@1"
)


def vllm_events(n: int) -> list[bytes]:
    tokens = [vllm_event(f" word{i}", model="base") for i in range(n)]
    usage = {"prompt_tokens": 9, "completion_tokens": n}
    return [*tokens, vllm_event("", model="base", usage=usage), b"data: [DONE]\n\n"]


def engine(events: list[bytes]) -> Starlette:
    async def completions(request: Request) -> StreamingResponse:
        await request.body()

        async def stream() -> AsyncIterator[bytes]:
            for event in events:
                yield event

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])


async def bare(session: InProcessSession) -> None:
    kept: list[bytes] = []

    async def sink(body: bytes) -> None:
        kept.append(body)

    response = await session.post("http://engine/v1/completions", json={"prompt": "hi", "stream": True})
    await response.pipe(sink)


async def proxied(session: InProcessSession) -> None:
    call = Call(endpoint="completions", request_id="cmpl-gateway", capturing=True)
    response = await session.post("http://engine/v1/completions", json={"prompt": "hi", "stream": True})
    stream = ProxiedStream(response, TARGET, call, include_usage=False, as_chat=False)
    kept: list[Message] = []

    async def send(message: Message) -> None:
        kept.append(message)

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client never leaves
        return {"type": "http.disconnect"}

    await stream({"type": "http", RAW_SEND: send}, receive, send)
    assert call.answer_text().startswith(" word0") and call.usage is not None


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    app = engine(vllm_events(args.events))
    session = InProcessSession(app, {"app": app, "state": {}}, {})
    kinds = {"bare": bare, "proxied": proxied}
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    for run in kinds.values():  # warm up
        await run(session)
    for r in range(args.repeats):
        for kind, run in kinds.items() if r % 2 == 0 else reversed(kinds.items()):
            start = time.process_time()
            for _ in range(args.streams):
                await run(session)
            seconds[kind].append((time.process_time() - start) / args.streams)
    bare_us, proxied_us = (statistics.median(seconds[k]) * 1e6 for k in kinds)
    return {
        "events_per_stream": args.events,
        "bare_us_per_stream": bare_us,
        "proxied_us_per_stream": proxied_us,
        "added_us_per_stream": proxied_us - bare_us,
        "added_cpu_s_per_1k_tokens": (proxied_us - bare_us) / 1e6 / (args.events / 1000),
        "ratio": proxied_us / bare_us,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=400, help="streams per round (default 400)")
    parser.add_argument("--events", type=int, default=64, help="token events per stream (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of each kind (default 5)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    print(
        f"{args.events} events per stream: engine's bare stream {result['bare_us_per_stream']:.0f} us, "
        f"through ProxiedStream {result['proxied_us_per_stream']:.0f} us "
        f"({result['ratio']:.2f}x): the gateway adds {result['added_us_per_stream']:.0f} us per stream, "
        f"{result['added_cpu_s_per_1k_tokens']:.4f} CPU-s per 1,000 tokens"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
