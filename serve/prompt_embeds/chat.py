"""Chat for prompt-embedding versions: what a chat request may ask, and the answer as a chat again.

vLLM takes prompt embeddings on `/v1/completions` only, so a chat request for a prompt-tuned version
is rendered by the gateway (`PromptEmbedder.chat_embeds`) and sent there; the text completion that
comes back is reshaped here into OpenAI's `chat.completion` (or, streamed, `chat.completion.chunk`
events), so a client cannot tell the difference. No torch here: this runs on the event loop.

Chat options the rendering cannot honour (tools, a custom template, logprobs in the chat shape, ...)
are refused with a 400 naming the field, rather than silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tuneloop.serve.errors import bad_request

UNSUPPORTED_CHAT_FIELDS = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "logprobs",
    "top_logprobs",
    "chat_template",
    "chat_template_kwargs",
    "continue_final_message",
    "documents",
    "echo",
    "modalities",
    "audio",
    "mm_processor_kwargs",
)
"""Chat fields that change the rendered prompt or the answer's shape in ways this path does not do."""


def pop_chat_fields(body: dict[str, Any]) -> None:
    """Remove the chat-only options from `body`; 400 for the first one set to a non-neutral value."""
    for name in UNSUPPORTED_CHAT_FIELDS:
        value = body.pop(name, None)
        if value not in (None, False, [], {}):
            raise bad_request(
                f"`{name}` is not supported for prompt-tuned versions: their chats are rendered by the "
                "gateway with the model's own chat template and answered as plain text",
                param=name,
                code="unsupported_parameter",
            )


def plain_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages with their content as one string, as vLLM renders text-only content parts.

    Only text parts are accepted: the gateway renders the chat itself and has nothing to put in
    place of an image, audio or embeddings part.
    """
    plain = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, Mapping) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                    raise bad_request(
                        f"messages[{i}] has a {kind!r} content part; prompt-tuned versions take text only",
                        param=f"messages.{i}.content",
                        code="invalid_value",
                    )
                texts.append(str(part.get("text", "")))
            content = "\n".join(texts)
        plain.append({**message, "content": content if content is not None else ""})
    return plain


def chat_completion(data: dict[str, Any]) -> dict[str, Any]:
    """A `text_completion` answer as the `chat.completion` vLLM's chat endpoint would have given."""
    choices = []
    for choice in data.get("choices") or []:
        choices.append(
            {
                "index": choice.get("index", 0),
                "message": {"role": "assistant", "content": choice.get("text", "")},
                "logprobs": None,
                "finish_reason": choice.get("finish_reason"),
                "stop_reason": choice.get("stop_reason"),
                **_token_ids(choice),
            }
        )
    return {**_envelope(data, "chat.completion"), "choices": choices, "usage": data.get("usage")}


class ChatChunks:
    """Streamed `text_completion` events as `chat.completion.chunk` events, one stream's worth.

    The first event of each choice carries `role: assistant`, as OpenAI's and vLLM's streams do.
    """

    def __init__(self) -> None:
        self._started: set[int] = set()

    def chunk(self, event: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for choice in event.get("choices") or []:
            index = int(choice.get("index", 0))
            delta: dict[str, Any] = {"content": choice.get("text", "")}
            if index not in self._started:
                self._started.add(index)
                delta = {"role": "assistant", **delta}
            choices.append(
                {
                    "index": index,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": choice.get("finish_reason"),
                    "stop_reason": choice.get("stop_reason"),
                    **_token_ids(choice),
                }
            )
        chunk = {**_envelope(event, "chat.completion.chunk"), "choices": choices}
        if event.get("usage") is not None:
            chunk["usage"] = event["usage"]
        return chunk


def _envelope(data: Mapping[str, Any], kind: str) -> dict[str, Any]:
    envelope = {"id": data.get("id"), "object": kind, "created": data.get("created")}
    envelope["model"] = data.get("model")
    if data.get("system_fingerprint") is not None:
        envelope["system_fingerprint"] = data["system_fingerprint"]
    return envelope


def _token_ids(choice: Mapping[str, Any]) -> dict[str, Any]:
    # vLLM's `return_token_ids` extra: kept, since clients that asked for it compare token ids.
    return {"token_ids": choice["token_ids"]} if choice.get("token_ids") is not None else {}
