"""Response and error bodies across wire formats: Anthropic Messages <-> OpenAI Chat.

The client gets an answer shaped like the API it called, whatever served it.
Usage is normalized through `TokenUsage` on the way, so the numbers that the
client sees are the numbers that the ledger prices.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

from spendgate.pricing.catalog import TokenUsage
from spendgate.wire.translate_request import text_of, anthropic_tool_id, dump_input, parse_arguments
from spendgate.wire.usage import from_anthropic, from_openai, to_anthropic, to_openai

Json = dict[str, Any]

# Anthropic stop_reason -> OpenAI finish_reason. pause_turn (a server tool paused a
# long turn) has no OpenAI analogue; the turn did end, so "stop".
FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# OpenAI finish_reason -> Anthropic stop_reason.
STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def finish_reason_for(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "", "stop")


def stop_reason_for(finish_reason: str | None) -> str:
    return STOP_REASONS.get(finish_reason or "", "end_turn")


# ---------------------------------------------------------------- ids


def openai_id_for(message_id: Any) -> str:
    """`msg_01Abc` -> `chatcmpl-01Abc`: the same call is recognisable in both logs."""
    suffix = str(message_id).removeprefix("msg_") if message_id else uuid.uuid4().hex
    return f"chatcmpl-{suffix}"


def anthropic_id_for(completion_id: Any) -> str:
    suffix = str(completion_id).removeprefix("chatcmpl-") if completion_id else uuid.uuid4().hex
    return f"msg_{suffix}"


# ---------------------------------------------------------------- usage
# wire.usage covers the common fields; these add the two each side reports
# that the other can carry too (OpenAI cache writes, Anthropic thinking tokens).


def read_anthropic_usage(usage: Json | None) -> TokenUsage:
    u = from_anthropic(usage)
    details = (usage or {}).get("output_tokens_details") or {}
    thinking = details.get("thinking_tokens")
    if isinstance(thinking, int) and thinking and not u.reasoning_tokens:
        u = replace(u, reasoning_tokens=thinking)
    return u


def read_openai_usage(usage: Json | None) -> TokenUsage:
    u = from_openai(usage)
    details = (usage or {}).get("prompt_tokens_details") or {}
    written = details.get("cache_write_tokens")
    if isinstance(written, int) and written and not u.cache_write_tokens:
        u = replace(u, cache_write_tokens=written)
    return u


def openai_usage_block(u: TokenUsage) -> Json:
    out = to_openai(u)
    if u.cache_write_tokens:
        out["prompt_tokens_details"]["cache_write_tokens"] = u.cache_write_tokens
    return out


def anthropic_usage_block(u: TokenUsage) -> Json:
    out = to_anthropic(u)
    if u.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": u.reasoning_tokens}
    return out


# ---------------------------------------------------------------- responses


def anthropic_response_to_openai(resp: Json, model: str) -> Json:
    """Anthropic `message` -> OpenAI `chat.completion`; `model` is the name the client sees."""
    texts: list[str] = []
    calls: list[Json] = []
    for block in resp.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            calls.append(_openai_tool_call(block))
    message: Json = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    finish = finish_reason_for(resp.get("stop_reason"))
    choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
    return {
        "id": openai_id_for(resp.get("id")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": openai_usage_block(read_anthropic_usage(resp.get("usage"))),
    }


def _openai_tool_call(block: Json) -> Json:
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name"), "arguments": dump_input(block.get("input"))},
    }


def openai_response_to_anthropic(resp: Json, model: str) -> Json:
    """OpenAI `chat.completion` (first choice) -> Anthropic `message`."""
    choices = resp.get("choices") or []
    choice = choices[0] if choices else {}
    msg = choice.get("message") or {}
    content: list[Json] = []
    text = text_of(msg.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    refusal = msg.get("refusal")
    if refusal:
        content.append({"type": "text", "text": refusal})
    content.extend(_anthropic_tool_uses(msg))
    stop_reason = stop_reason_for(choice.get("finish_reason"))
    if refusal and stop_reason == "end_turn":
        stop_reason = "refusal"
    return {
        "id": anthropic_id_for(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,  # OpenAI does not say which stop sequence matched
        "usage": anthropic_usage_block(read_openai_usage(resp.get("usage"))),
    }


def _anthropic_tool_uses(msg: Json) -> list[Json]:
    blocks: list[Json] = []
    for call in msg.get("tool_calls") or []:
        if call.get("type") == "custom":
            custom = call.get("custom") or {}
            name, tool_input = custom.get("name"), {"_raw": custom.get("input") or ""}
        else:
            fn = call.get("function") or {}
            name, tool_input = fn.get("name"), parse_arguments(fn.get("arguments"))
        tool_id = anthropic_tool_id(call.get("id"))
        blocks.append({"type": "tool_use", "id": tool_id, "name": name or "", "input": tool_input})
    legacy = msg.get("function_call")
    if isinstance(legacy, dict) and not blocks:
        blocks.append(
            {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:24]}",
                "name": legacy.get("name") or "",
                "input": parse_arguments(legacy.get("arguments")),
            }
        )
    return blocks


# ---------------------------------------------------------------- errors

# Anthropic error type -> (OpenAI error type, OpenAI error code)
_OPENAI_ERRORS: dict[str, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "request_too_large": ("invalid_request_error", None),
    "authentication_error": ("authentication_error", "invalid_api_key"),
    "permission_error": ("permission_error", None),
    "not_found_error": ("invalid_request_error", None),
    "rate_limit_error": ("rate_limit_exceeded", "rate_limit_exceeded"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "timeout_error": ("timeout", None),
    "api_error": ("server_error", None),
    "overloaded_error": ("server_error", "overloaded"),
}
# HTTP status -> Anthropic error type, used when the body names no type we know.
_ANTHROPIC_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# OpenAI error codes/types that say more than the status does.
_ANTHROPIC_BY_OPENAI: dict[str, str] = {
    "insufficient_quota": "billing_error",
    "invalid_api_key": "authentication_error",
    "authentication_error": "authentication_error",
    "model_not_found": "not_found_error",
    "rate_limit_exceeded": "rate_limit_error",
    "permission_error": "permission_error",
    "server_error": "api_error",
    "timeout": "timeout_error",
    "invalid_request_error": "invalid_request_error",
}


def _error_parts(status: int, body: Any) -> tuple[Json, str]:
    """The inner error object and its message, from whatever shape the upstream sent."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, str):
        return {}, err
    if not isinstance(err, dict):
        err = body if isinstance(body, dict) else {}
    message = err.get("message") or err.get("detail")
    if not isinstance(message, str) or not message:
        message = f"upstream error (HTTP {status})"
    return err, message


def _default_type(status: int) -> str:
    """Unknown errors: a 4xx is the caller's problem, anything else (5xx, or an
    error inside a 200 stream) is the upstream's."""
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def _anthropic_type_for(status: int, err: Json) -> str:
    code, kind = err.get("code"), err.get("type")
    for key in (code, kind):
        if key in ("insufficient_quota", "invalid_api_key", "model_not_found", "rate_limit_exceeded"):
            return _ANTHROPIC_BY_OPENAI[key]
    if status in _ANTHROPIC_BY_STATUS:
        return _ANTHROPIC_BY_STATUS[status]
    for key in (code, kind):
        if isinstance(key, str) and key in _ANTHROPIC_BY_OPENAI:
            return _ANTHROPIC_BY_OPENAI[key]
    return _default_type(status)


def openai_error_to_anthropic(status: int, body: Json) -> Json:
    """OpenAI error body -> Anthropic error body; the message is kept verbatim.

    `status` is the upstream HTTP status (200 for an error inside a stream).
    """
    err, message = _error_parts(status, body)
    return {"type": "error", "error": {"type": _anthropic_type_for(status, err), "message": message}}


def anthropic_error_to_openai(status: int, body: Json) -> Json:
    """Anthropic error body -> OpenAI error body; the message is kept verbatim."""
    err, message = _error_parts(status, body)
    kind = err.get("type")
    if kind not in _OPENAI_ERRORS:
        kind = _ANTHROPIC_BY_STATUS.get(status) or _default_type(status)
    openai_type, code = _OPENAI_ERRORS[kind]
    if kind == "not_found_error" and "model" in message.lower():
        code = "model_not_found"
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}
