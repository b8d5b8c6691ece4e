"""Serving a stored answer again, as JSON or as the stream the client asked for.

The stored body is the non-streaming JSON in the client's format
(`cache/capture.py`). A replay is a new response: a fresh id derived from the
request id and a current `created`, with the content and usage unchanged
(the usage says what the answer cost when it was made). Streams are the
events the real APIs send, in their order, with text cut into word-sized
pieces rather than one event per character.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from spendgate.cache.capture import MESSAGE_FIELDS
from spendgate.wire.sse import DONE, frame

Json = dict[str, Any]

PIECE_CHARS = 24  # about five tokens per streamed text event
_ID_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_ID_PREFIXES = {"chat.completions": "chatcmpl-", "completions": "cmpl-", "messages": "msg_"}


def response_id(endpoint: str, request_id: str) -> str:
    """`chatcmpl-<request id>` / `cmpl-…` / `msg_…`: the replay is recognisable in the ledger."""
    return _ID_PREFIXES[endpoint] + (_ID_SAFE.sub("", request_id) or "replay")


def replay_json(wire: str, endpoint: str, stored: Json | bytes, *, request_id: str) -> bytes:
    """The stored body as a new non-streaming response."""
    body = _body(stored)
    if endpoint == "embeddings":
        return orjson.dumps(body)  # an embeddings list has no id or timestamp
    out = {**body, "id": response_id(endpoint, request_id)}
    if wire == "openai":
        out["created"] = int(time.time())
    return orjson.dumps(out)


def replay_sse(wire: str, endpoint: str, stored: Json | bytes, *, request_id: str, include_usage: bool) -> list[bytes]:
    """The stored body as the SSE frames of a streamed response.

    `include_usage`: the OpenAI client asked for `stream_options.include_usage`
    (Anthropic streams always carry usage).
    """
    body = _body(stored)
    rid = response_id(endpoint, request_id) if endpoint in _ID_PREFIXES else ""
    if wire == "anthropic" and endpoint == "messages":
        return _anthropic_frames(body, rid)
    if wire == "openai" and endpoint == "chat.completions":
        return _OpenAIFrames(body, rid, "chat.completion.chunk", include_usage).chat()
    if wire == "openai" and endpoint == "completions":
        return _OpenAIFrames(body, rid, "text_completion", include_usage).legacy()
    raise ValueError(f"{wire} {endpoint} is never streamed")


def split_text(text: str, size: int = PIECE_CHARS) -> list[str]:
    """Pieces of about `size` characters, cut before a space where one is near."""
    pieces: list[str] = []
    start, n = 0, len(text)
    while start < n:
        end = start + size
        if end >= n:
            pieces.append(text[start:])
            break
        cut = text.rfind(" ", start + 1, end + 1)
        if cut > start + size // 3:
            end = cut
        pieces.append(text[start:end])
        start = end
    return pieces


# ---------------------------------------------------------------- OpenAI


class _OpenAIFrames:
    """Chunks for one replayed OpenAI stream: each choice in turn, then usage and `[DONE]`."""

    def __init__(self, body: Json, rid: str, obj: str, include_usage: bool) -> None:
        self.body = body
        self.include_usage = include_usage
        extra = {k: v for k, v in body.items() if k not in ("id", "object", "created", "model", "choices", "usage")}
        self.head: Json = {"id": rid, "object": obj, "created": int(time.time()), "model": body.get("model"), **extra}
        self.frames: list[bytes] = []

    def chat(self) -> list[bytes]:
        for choice in self.body.get("choices") or []:
            self._chat_choice(choice)
        return self._end()

    def legacy(self) -> list[bytes]:
        for choice in self.body.get("choices") or []:
            index, logprobs = choice.get("index", 0), choice.get("logprobs")
            for piece in split_text(choice.get("text") or ""):
                self._emit({"text": piece, "index": index, "logprobs": logprobs, "finish_reason": None})
                logprobs = None  # a choice's logprobs travel once, with its first piece
            self._emit({"text": "", "index": index, "logprobs": logprobs, "finish_reason": choice.get("finish_reason")})
        return self._end()

    def _chat_choice(self, choice: Json) -> None:
        index = choice.get("index", 0)
        msg = choice.get("message") or {}
        content, refusal = msg.get("content"), msg.get("refusal")
        logprobs = choice.get("logprobs")

        def delta(d: Json) -> None:
            nonlocal logprobs
            self._emit({"index": index, "delta": d, "logprobs": logprobs, "finish_reason": None})
            logprobs = None  # a choice's logprobs travel once, with its first content

        role = {"role": msg.get("role") or "assistant", "content": "" if isinstance(content, str) else None,
                "refusal": "" if isinstance(refusal, str) else None}  # fmt: skip
        self._emit({"index": index, "delta": role, "logprobs": None, "finish_reason": None})
        for key, value in msg.items():  # e.g. `reasoning_content` from OpenAI-compatible servers: before the answer
            if isinstance(value, str) and key not in MESSAGE_FIELDS:
                for piece in split_text(value):
                    delta({key: piece})
        for piece in split_text(content if isinstance(content, str) else ""):
            delta({"content": piece})
        for piece in split_text(refusal if isinstance(refusal, str) else ""):
            delta({"refusal": piece})
        if "annotations" in msg:
            delta({"annotations": msg["annotations"]})
        for position, call in enumerate(msg.get("tool_calls") or []):
            fn = call.get("function") or {}
            head = {"index": position, "id": call.get("id"), "type": call.get("type", "function"),
                    "function": {"name": fn.get("name"), "arguments": ""}}  # fmt: skip
            delta({"tool_calls": [head]})
            for piece in split_text(fn.get("arguments") or ""):
                delta({"tool_calls": [{"index": position, "function": {"arguments": piece}}]})
        legacy = msg.get("function_call")
        if isinstance(legacy, dict):
            delta({"function_call": {"name": legacy.get("name"), "arguments": ""}})
            for piece in split_text(legacy.get("arguments") or ""):
                delta({"function_call": {"arguments": piece}})
        self._emit({"index": index, "delta": {}, "logprobs": logprobs, "finish_reason": choice.get("finish_reason")})

    def _emit(self, choice: Json) -> None:
        chunk = {**self.head, "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI sends it: on every chunk, null until the last
        self.frames.append(frame(orjson.dumps(chunk)))

    def _end(self) -> list[bytes]:
        usage = self.body.get("usage")
        if self.include_usage and isinstance(usage, dict):
            self.frames.append(frame(orjson.dumps({**self.head, "choices": [], "usage": usage})))
        self.frames.append(DONE)
        return self.frames


# ---------------------------------------------------------------- Anthropic

_DELTA_KEYS = ("stop_reason", "stop_sequence", "stop_details", "container")  # what message_delta says
_DELTA_USAGE = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "server_tool_use", "output_tokens_details")


def _anthropic_frames(body: Json, rid: str) -> list[bytes]:
    usage: Json = dict(body.get("usage") or {})
    output = usage.get("output_tokens") or 0
    start_usage = {**usage, "output_tokens": min(1, output)}  # as the API does: output counted at the end
    start = {**body, "id": rid, "content": [], "usage": start_usage}
    for key in _DELTA_KEYS:
        if key in start:
            start[key] = None
    frames = [_event("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(body.get("content") or []):
        frames.extend(_block_frames(index, block))
    delta_usage = {k: usage[k] for k in _DELTA_USAGE if usage.get(k) is not None}
    delta_usage["output_tokens"] = output
    delta = {k: body.get(k) for k in _DELTA_KEYS if k in body or k in ("stop_reason", "stop_sequence")}
    frames.append(_event("message_delta", {"type": "message_delta", "delta": delta, "usage": delta_usage}))
    frames.append(_event("message_stop", {"type": "message_stop"}))
    return frames


def _block_frames(index: int, block: Json) -> list[bytes]:
    kind = block.get("type")
    deltas: list[Json] = []
    if kind == "text":
        start = {**block, "text": ""}
        citations = block.get("citations")
        if isinstance(citations, list):
            start["citations"] = []
        deltas = [{"type": "text_delta", "text": p} for p in split_text(block.get("text") or "")]
        if isinstance(citations, list):
            deltas += [{"type": "citations_delta", "citation": c} for c in citations]
    elif kind == "thinking":
        start = {**block, "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": p} for p in split_text(block.get("thinking") or "")]
        if block.get("signature"):
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif "input" in block:  # tool_use, server_tool_use, mcp_tool_use: input streamed as JSON text
        start = {**block, "input": {}}
        raw = orjson.dumps(block["input"]).decode() if block["input"] else ""
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *split_text(raw)]]
    else:  # redacted thinking, tool results: sent whole in the start event
        start = block
    frames = [_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})]
    frames += [_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
    frames.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    return frames


def _event(name: str, data: Json) -> bytes:
    return frame(orjson.dumps(data), name)


def _body(stored: Json | bytes) -> Json:
    body = orjson.loads(stored) if isinstance(stored, (bytes, bytearray, memoryview, str)) else stored
    if not isinstance(body, dict):
        raise ValueError("a stored response body is a JSON object")
    return body
