"""Anthropic Messages wire format: request parsing and error bodies."""

from __future__ import annotations

from typing import Any

import orjson

from spendgate.errors import GatewayError

_ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "rate_limit": "rate_limit_error",
    "upstream": "api_error",
    "timeout": "api_error",
    "overloaded": "overloaded_error",
}

DEFAULT_VERSION = "2023-06-01"


def error_body(err: GatewayError) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": _ERROR_TYPES.get(err.kind, "invalid_request_error"), "message": err.message}}
    )


def parse_request(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"There was an error parsing the body: {exc}") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.")
    for name in ("model", "messages", "max_tokens"):
        if name not in body:
            raise GatewayError(400, f"{name}: Field required", param=name)
    if not isinstance(body["model"], str) or not body["model"]:
        raise GatewayError(400, "model: must be a non-empty string", param="model")
    if not isinstance(body["messages"], list):
        raise GatewayError(400, "messages: Input should be a valid list", param="messages")
    if isinstance(body["max_tokens"], bool) or not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise GatewayError(400, "max_tokens: must be a positive integer", param="max_tokens")
    if not isinstance(body.get("stream", False), bool):
        raise GatewayError(400, "stream: Input should be a valid boolean", param="stream")
    return body


def request_tags(body: dict[str, Any]) -> dict[str, str]:
    meta = body.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("user_id"), str) and meta["user_id"]:
        return {"user": meta["user_id"]}
    return {}


def prompt_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        parts.append(system)
    elif isinstance(system, list):
        parts.extend(b.get("text", "") for b in system if isinstance(b, dict))
    for m in body.get("messages", []):
        if not isinstance(m, dict):
            continue
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(b.get("text", "") for b in c if isinstance(b, dict) and isinstance(b.get("text"), str))
    return "\n".join(parts)
