"""OpenAI wire format: request parsing, error bodies, stream details."""

from __future__ import annotations

from typing import Any

import orjson

from spendgate.errors import GatewayError

# neutral error kind -> OpenAI error type
_ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "invalid_request_error",
    "rate_limit": "rate_limit_exceeded",
    "upstream": "server_error",
    "timeout": "timeout",
    "overloaded": "server_error",
}
_ERROR_CODES = {"authentication": "invalid_api_key", "not_found": "model_not_found", "rate_limit": "rate_limit_exceeded"}

# endpoint -> (required fields)
REQUIRED: dict[str, tuple[str, ...]] = {
    "chat.completions": ("model", "messages"),
    "completions": ("model", "prompt"),
    "embeddings": ("model", "input"),
}

PATHS: dict[str, str] = {
    "chat.completions": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}


def error_body(err: GatewayError) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": err.message,
                "type": _ERROR_TYPES.get(err.kind, "invalid_request_error"),
                "param": err.param,
                "code": _ERROR_CODES.get(err.kind),
            }
        }
    )


def parse_request(endpoint: str, raw: bytes) -> dict[str, Any]:
    """Parse and check the fields spendgate itself needs; the upstream checks the rest."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.")
    for name in REQUIRED[endpoint]:
        if name not in body:
            raise GatewayError(400, f"Missing required parameter: '{name}'.", param=name)
    if not isinstance(body["model"], str) or not body["model"]:
        raise GatewayError(400, "'model' must be a non-empty string.", param="model")
    if endpoint == "chat.completions" and (not isinstance(body["messages"], list) or not body["messages"]):
        raise GatewayError(400, "'messages' must be a non-empty array.", param="messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise GatewayError(400, "'stream' must be a boolean.", param="stream")
    return body


def client_wants_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def request_tags(body: dict[str, Any]) -> dict[str, str]:
    """Tags a client put in the body: `metadata` pairs and `user`."""
    tags: dict[str, str] = {}
    meta = body.get("metadata")
    if isinstance(meta, dict):
        for k, v in meta.items():
            if isinstance(v, str):
                tags[str(k)] = v
    user = body.get("user")
    if isinstance(user, str) and user:
        tags["user"] = user
    return tags


def prompt_text(body: dict[str, Any]) -> str:
    """The prompt as text: for estimates, fingerprints and opt-in capture."""
    if "messages" in body:
        parts: list[str] = []
        for m in body["messages"]:
            if not isinstance(m, dict):
                continue
            c = m.get("content")
            if isinstance(c, str):
                parts.append(c)
            elif isinstance(c, list):
                parts.extend(p.get("text", "") for p in c if isinstance(p, dict))
        return "\n".join(parts)
    value = body.get("prompt", body.get("input", ""))
    if isinstance(value, list):
        return "\n".join(v for v in value if isinstance(v, str))
    return value if isinstance(value, str) else ""
