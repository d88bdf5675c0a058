"""What the completion endpoints share: strict parsing of a request body into a checked model.

Bodies are validated here, before anything reaches the engine, so malformed JSON and wrong types
are a 400 in our shape with the offending field as `param`. Models allow extra fields: vLLM's own
sampling parameters (`ignore_eos`, `top_k`, ...) pass through, and vLLM checks those itself.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneloop.serve.errors import OpenAIError, bad_request

CLIENT_FORBIDDEN_FIELDS = ("prompt_embeds",)
"""Engine inputs no client may send: the engine takes prompt embeddings (for prompt-tuned versions),
but only ones the gateway built; a client's own tensors are unpickled by the engine and bypass the
tokenizer and every prompt the version was trained with."""


class RequestModel(BaseModel):
    """Strict JSON types (no "5" for 5), no NaN/Infinity, unknown fields kept and forwarded."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class StreamOptions(RequestModel):
    include_usage: bool | None = Field(None, description="Send usage in a last event before [DONE].")
    continuous_usage_stats: bool | None = Field(None, description="vLLM: usage in every event.")


class SamplingFields(RequestModel):
    """Fields both endpoints take, with OpenAI's bounds."""

    model: str = Field(min_length=1, max_length=512, description="Base model, alias, or ADAPTER@N.")
    stream: bool = Field(False, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=16)
    stop: str | list[str] | None = Field(None, description="Up to 16 stop strings.")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: int | None = None
    user: str | None = Field(None, max_length=256)


M = TypeVar("M", bound=SamplingFields)
B = TypeVar("B", bound=BaseModel)


def parse_json(raw: bytes, schema: type[B]) -> B:
    """`raw` validated as `schema`, or a 400 naming the first bad field: every endpoint's body.

    The body's size was bounded while it was read (serve/request/limits.py): this parse holds the interpreter.
    """
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise as_bad_request(exc) from None


def parse_body(raw: bytes, schema: type[M]) -> M:
    """A completion request's body: `parse_json`, plus the checks of fields vLLM would take as they are."""
    parsed = parse_json(raw, schema)
    if isinstance(parsed.stop, list) and len(parsed.stop) > 16:
        raise bad_request("At most 16 stop sequences.", param="stop")
    for name in CLIENT_FORBIDDEN_FIELDS:
        if name in (parsed.model_extra or {}):
            raise bad_request(
                f"`{name}` cannot be sent to this gateway; send the prompt as text or token ids.",
                param=name,
                code="unsupported_parameter",
            )
    return parsed


def engine_body(parsed: SamplingFields, engine_model: str) -> dict[str, Any]:
    """What is posted to the engine: the fields the client set (extras included), model rewritten."""
    body = parsed.model_dump(mode="json", exclude_unset=True)
    body["model"] = engine_model
    return body


def as_bad_request(exc: ValidationError) -> OpenAIError:
    """A pydantic validation failure as a 400 naming the first bad field (and how many more)."""
    first: dict[str, Any] = dict(exc.errors(include_url=False, include_input=False)[0])
    if first["type"] == "json_invalid":
        return bad_request(f"The body is not valid JSON: {first['msg']}.", code="invalid_json")
    if first["type"] == "model_type":
        return bad_request("The body must be a JSON object.", code="invalid_json")
    param = ".".join(str(part) for part in first["loc"])
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    if not param:  # a check of the whole body (e.g. "give at least one of ...")
        return bad_request(f"Invalid request: {first['msg']}{more}.", code="invalid_value")
    return bad_request(f"Invalid `{param}`: {first['msg']}{more}.", param=param, code="invalid_value")
