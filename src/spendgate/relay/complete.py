"""Non-streaming responses: read, meter, translate when formats differ."""

from __future__ import annotations

from typing import Any

import orjson

from spendgate.meter import Attempt
from spendgate.pricing.catalog import TokenUsage
from spendgate.wire import usage as wire_usage
from spendgate.wire.translate_response import anthropic_response_to_openai, openai_response_to_anthropic


class BadUpstreamBody(ValueError):
    """The upstream answered 200 with something that is not a response object."""


def estimate_tokens(text: str) -> int:
    """≈ 4 characters per token: only where the provider reported no usage."""
    return max(1, len(text) // 4) if text else 0


def read_completion(
    raw: bytes, upstream_wire: str, client_wire: str, attempt: Attempt, capture: bool, prompt: str
) -> tuple[bytes, dict[str, Any]]:
    """Fill `attempt` from the upstream body; return the client's body, and the
    upstream's parsed (what a cascade's checks judge)."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadUpstreamBody(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadUpstreamBody(f"a JSON {type(body).__name__}, not an object")
    if upstream_wire == "anthropic":
        attempt.usage = wire_usage.from_anthropic(body.get("usage"))
        stop = body.get("stop_reason")
        attempt.finish_reason = stop if isinstance(stop, str) else None
    else:
        attempt.usage = wire_usage.from_openai(body.get("usage"))
        choices = body.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            attempt.finish_reason = choices[0].get("finish_reason")
    model = body.get("model")
    attempt.model_used = model if isinstance(model, str) and model else None
    text = _text(body, upstream_wire)
    if not (attempt.usage.input_tokens or attempt.usage.output_tokens):
        # Some OpenAI-compatible servers omit usage: never record such a call as $0.
        attempt.usage_source = "estimated"
        attempt.usage = TokenUsage(input_tokens=estimate_tokens(prompt), output_tokens=estimate_tokens(text))
    if capture:
        attempt.response_text = text
    if upstream_wire == client_wire:
        return raw, body
    if client_wire == "openai":
        return orjson.dumps(anthropic_response_to_openai(body, attempt.model_used or attempt.deployment.model)), body
    return orjson.dumps(openai_response_to_anthropic(body, attempt.model_used or attempt.deployment.model)), body


def _text(body: dict[str, Any], wire: str) -> str:
    if wire == "anthropic":
        blocks = body.get("content")
        if not isinstance(blocks, list):
            return ""
        return "".join(b["text"] for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str))
    parts: list[str] = []
    choices = body.get("choices")
    for c in choices if isinstance(choices, list) else []:
        if not isinstance(c, dict):
            continue
        msg = c.get("message")
        content = msg.get("content") if isinstance(msg, dict) else c.get("text")
        if isinstance(content, str):
            parts.append(content)
    return "\n".join(parts)
