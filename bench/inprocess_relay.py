"""An ASGI middleware for vLLM's OpenAI server (`--middleware inprocess_relay.Relay`): an experiment.

It does, inside the engine's own process, the per-request and per-event work tuneloop's gateway
does in its own process -- the request body parsed and the model name replaced, every stream
event decoded (what capture and the first-token clock read) and its `id` and `model` rewritten by
byte substitution -- so that bench/relay.py can measure what a gateway that is not a second process
would cost. Requests without the `X-Relay: 1` header pass through untouched (the direct rounds).

Not product code: no keys, no registry, no capture writer. Only for the benchmark.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

RELAY_HEADER = (b"x-relay", b"1")
ALIAS = "relayed"


class Relay:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.engine_model = os.environ["RELAY_ENGINE_MODEL"]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or RELAY_HEADER not in scope["headers"]:
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        request["model"] = self.engine_model  # routing: the alias the client named -> the engine's name
        body = json.dumps(request).encode()
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # the disconnect, when it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        request_id = f"cmpl-{uuid.uuid4().hex}".encode()
        swaps: list[tuple[bytes, bytes]] = []

        async def relay(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                out = []
                for event in message["body"].split(b"\n\n"):
                    if event.startswith(b"data: {"):
                        payload = event[6:]
                        parsed = json.loads(payload)  # what capture and the first-token clock read
                        if not swaps:
                            swaps.append((_pair("id", parsed["id"]), b'"id":"' + request_id + b'"'))
                            swaps.append((_pair("model", parsed["model"]), _pair("model", ALIAS)))
                        for old, new in swaps:
                            payload = payload.replace(old, new, 1)
                        out.append(b"data: " + payload + b"\n\n")
                    elif event.strip():
                        out.append(event + b"\n\n")
                message = {**message, "body": b"".join(out)}
            await send(message)

        await self.app(scope, replay, relay)


def _pair(key: str, value: str) -> bytes:
    return f'"{key}":{json.dumps(value, ensure_ascii=False)}'.encode()
