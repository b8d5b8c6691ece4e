"""`POST /v1/messages` and `/v1/messages/count_tokens`, JSON and SSE.

The stream is exactly Anthropic's: message_start (input usage, output_tokens 1),
content_block_start, ping, content_block_delta…, content_block_stop,
message_delta (stop_reason, cumulative output_tokens), message_stop.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from spendgate.simulator.directives import read_controls
from spendgate.simulator.errors import Refusal, anthropic_error, bad_request
from spendgate.simulator.faults import Ask
from spendgate.simulator.ids import message_id, request_id, tool_use_id
from spendgate.simulator.logprobs import json_confidence
from spendgate.simulator.plan import TextAnswer, ToolAnswer, plan_text, plan_tool_call, split_fragments
from spendgate.simulator.prompt_cache import CacheUsage, anthropic_cache_usage
from spendgate.simulator.anthropic_prompt import last_turn_is_tool_result, messages_prompt
from spendgate.simulator.state import SimulatorState
from spendgate.simulator.streaming import SSE_HEADERS, send_stream

JSON_FRAGMENT_CHARS = 12
_STATIC_HEADERS = {
    "anthropic-organization-id": "00000000-0000-4000-8000-000000000000",
    "anthropic-ratelimit-requests-limit": "4000",
    "anthropic-ratelimit-requests-remaining": "3999",
    "anthropic-ratelimit-input-tokens-limit": "2000000",
    "anthropic-ratelimit-output-tokens-limit": "400000",
}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence", "tool": "tool_use"}


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    h = {"request-id": request_id("req_011"), **_STATIC_HEADERS}
    if extra:
        h.update(extra)
    return h


def has_anthropic_key(request: web.Request) -> bool:
    """`x-api-key`, or `Authorization: Bearer` (what the 2.x SDK sends)."""
    if request.headers.get("x-api-key", "").strip():
        return True
    auth = request.headers.get("authorization", "")
    return auth[:7].lower() == "bearer " and bool(auth[7:].strip())


async def _intake(request: web.Request, state: SimulatorState) -> dict[str, Any]:
    if state.settings.require_auth:
        if not has_anthropic_key(request):
            raise Refusal(anthropic_error(401, "authentication_error", "x-api-key header is required"))
    if not request.headers.get("anthropic-version"):
        raise bad_request("anthropic", "anthropic-version: header is required")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise bad_request("anthropic", f"There was an error parsing the request body as JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("anthropic", "Input should be a valid dictionary")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("anthropic", "model: Field required")
    return body


def _usage(input_tokens: int, cache: CacheUsage, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache.written,
        "cache_read_input_tokens": cache.read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache.written - cache.written_1h,
            "ephemeral_1h_input_tokens": cache.written_1h,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and "input_schema" in t]
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if not tools or kind == "none":
        return None
    if kind == "tool":
        for t in tools:
            if t.get("name") == choice.get("name"):
                return t
        raise bad_request("anthropic", f"tool_choice: tool '{choice.get('name')}' was not found in the request's tools")
    if kind != "any" and last_turn_is_tool_result(body):
        return None
    return tools[0]


def _stop_reason(answer: TextAnswer | ToolAnswer) -> str:
    """`refusal` for a `refusal_flag` reply that ran to its end (Claude's own refusal stop)."""
    if isinstance(answer, TextAnswer) and answer.kind == "refusal_flag" and answer.finish == "stop":
        return "refusal"
    return STOP_REASONS[answer.finish]


def _output_schema(body: dict[str, Any]) -> Any:
    """The JSON schema of Structured Outputs (`output_config.format`, or the beta `output_format`), or None."""
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else body.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        return schema if isinstance(schema, dict) else {"type": "object"}
    return None


class Messages:
    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await _intake(request, self.state)
        prompt = messages_prompt(body["model"], body)
        return web.Response(body=orjson.dumps({"input_tokens": prompt.tokens}), content_type="application/json", headers=_headers())

    async def create(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        body = await _intake(request, state)
        model: str = body["model"]
        limit = body.get("max_tokens")
        if limit is None:
            raise bad_request("anthropic", "max_tokens: Field required")
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise bad_request("anthropic", "max_tokens: Input should be a valid integer")
        if limit < 1:
            raise bad_request("anthropic", "max_tokens: Input should be greater than or equal to 1")
        prompt = messages_prompt(model, body)
        stops = body.get("stop_sequences") or []
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad_request("anthropic", "stop_sequences: Input should be a valid list of strings")
        tool = _chosen_tool(body)
        schema = _output_schema(body)
        stream = bool(body.get("stream"))
        controls = read_controls(prompt.directives, request.headers.get("x-sim-fault"), model)
        if controls.reply not in (None, "text"):
            tool = None  # a forced reply kind answers in text
        ask = Ask("messages", prompt.tokens)
        fault = state.faults.pick(controls, ask)
        await state.faults.wait_first_byte(controls)
        if fault is not None:
            refused = await state.faults.produce(fault, request, "anthropic", model, stream, controls, ask, _headers(SSE_HEADERS))
            if refused is not None:
                return refused

        cache = anthropic_cache_usage(state.anthropic_cache, prompt.mark_digests()) if prompt.marks else CacheUsage()
        input_tokens = prompt.tokens - cache.read - cache.written
        seed = prompt.digest()
        answer: TextAnswer | ToolAnswer
        if tool is not None:
            answer = plan_tool_call(seed, str(tool.get("name", "")), tool.get("input_schema"), controls.output_tokens, limit)
        else:
            reply = controls.reply or ("json" if schema is not None else "text")
            confidence = json_confidence(controls.logprob)
            answer = plan_text(seed, controls.output_tokens, limit, stops, reply=reply, schema=schema, confidence=confidence)
        if stream:
            frames, cut_at = _frames(model, answer, input_tokens, cache)
            tps = state.tokens_per_second(controls.tokens_per_second)
            return await send_stream(request, _headers(SSE_HEADERS), frames, tps, cut_at if fault == "cut" else None)
        if isinstance(answer, ToolAnswer):
            content: list[dict[str, Any]] = [{"type": "tool_use", "id": tool_use_id(), "name": answer.name, "input": answer.input}]
        else:
            content = [{"type": "text", "text": answer.text}]
        payload = {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": _stop_reason(answer),
            "stop_sequence": answer.stop_sequence if isinstance(answer, TextAnswer) else None,
            "usage": _usage(input_tokens, cache, answer.tokens),
        }
        return web.Response(body=orjson.dumps(payload), content_type="application/json", headers=_headers())


def _event(name: str, payload: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _frames(model: str, answer: TextAnswer | ToolAnswer, input_tokens: int, cache: CacheUsage) -> tuple[list[tuple[bytes, int]], int]:
    message = {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(input_tokens, cache, 1),
    }
    frames: list[tuple[bytes, int]] = [(_event("message_start", {"type": "message_start", "message": message}), 0)]
    if isinstance(answer, ToolAnswer):
        block: dict[str, Any] = {"type": "tool_use", "id": tool_use_id(), "name": answer.name, "input": {}}
        left = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":'
        parts = split_fragments(answer.arguments, JSON_FRAGMENT_CHARS)
        stop_sequence = None
    else:
        block = {"type": "text", "text": ""}
        left = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
        parts = answer.pieces
        stop_sequence = answer.stop_sequence
    frames.append((_event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}), 0))
    frames.append((_event("ping", {"type": "ping"}), 0))
    frames.extend((left + orjson.dumps(p) + b"}}\n\n", 1) for p in parts)
    cut_at = 3 + max(1, len(parts) // 2)
    frames.append((_event("content_block_stop", {"type": "content_block_stop", "index": 0}), 0))
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": _stop_reason(answer), "stop_sequence": stop_sequence},
        "usage": {"output_tokens": answer.tokens},
    }
    frames.append((_event("message_delta", delta), 0))
    frames.append((_event("message_stop", {"type": "message_stop"}), 0))
    return frames, cut_at
