"""What a client received, as one complete response body fit to store.

A cached answer is kept in the client's wire format as the non-streaming JSON
body, whether the call streamed or not: a later hit can then be served as JSON
or as a stream (`cache/replay.py`). A JSON answer is already that body
(`complete_body` only checks it is a success). A stream is folded into it as
it passes (`StreamCapture`): every SSE event is parsed once, fragments are
kept in lists and joined at the end, so feeding costs O(bytes).

A stream that did not end properly (no `[DONE]` / `message_stop`, an error
event, a choice or block left open, a tool input that is not JSON) yields
None: a broken answer is never stored.
"""

from __future__ import annotations

from typing import Any

import orjson

from spendgate.pricing.catalog import TokenUsage
from spendgate.wire.sse import SSEParser
from spendgate.wire.translate_response import anthropic_usage_block, openai_usage_block

Json = dict[str, Any]

# (wire, endpoint) -> the `object` / `type` of a success body
SUCCESS_OBJECTS: dict[tuple[str, str], str] = {
    ("openai", "chat.completions"): "chat.completion",
    ("openai", "completions"): "text_completion",
    ("openai", "embeddings"): "list",
    ("anthropic", "messages"): "message",
}
# chat message fields with a form of their own in a stream; other text fields are concatenated as sent
MESSAGE_FIELDS = frozenset({"role", "content", "refusal", "tool_calls", "function_call", "annotations"})
STREAMABLE = frozenset({("openai", "chat.completions"), ("openai", "completions"), ("anthropic", "messages")})


def complete_body(wire: str, endpoint: str, body: bytes | Json) -> Json | None:
    """The parsed success body of a non-streaming answer, or None if it is not one."""
    expected = _success_object(wire, endpoint)
    obj = _loads(body) if isinstance(body, (bytes, bytearray, memoryview, str)) else body
    if not isinstance(obj, dict) or obj.get("error"):
        return None
    if wire == "anthropic":
        content = obj.get("content")
        ok = obj.get("type") == expected and isinstance(content, list) and bool(obj.get("stop_reason"))
        return obj if ok else None
    if obj.get("object") != expected:
        return None
    if endpoint == "embeddings":
        data = obj.get("data")
        return obj if isinstance(data, list) and data and all(isinstance(d, dict) and "embedding" in d for d in data) else None
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    return obj if all(isinstance(c, dict) and c.get("finish_reason") for c in choices) else None


class StreamCapture:
    """Folds the SSE bytes a client received into the equivalent JSON body.

    `wire`: "openai" | "anthropic"; `endpoint`: "chat.completions" |
    "completions" | "messages". Feed it the bytes as they go out (split
    anywhere); `result()` at the end.
    """

    def __init__(self, wire: str, endpoint: str) -> None:
        if (wire, endpoint) not in STREAMABLE:
            raise ValueError(f"no stream to capture for {wire} {endpoint}")
        self._parser = SSEParser()
        self._acc: _OpenAIStream | _AnthropicStream = _OpenAIStream(endpoint) if wire == "openai" else _AnthropicStream()
        self.bytes_seen = 0  # so a caller can give up on answers too large to store

    @property
    def broken(self) -> bool:
        """An error event or a malformed event was seen: `result()` will be None."""
        return self._acc.broken

    def feed(self, chunk: bytes) -> None:
        self.bytes_seen += len(chunk)
        if self._acc.broken:
            return  # nothing will be stored: stop paying for parsing
        for ev in self._parser.feed(chunk):
            self._acc.event(ev.event, ev.data)

    def result(self, usage: TokenUsage | None = None) -> Json | None:
        """The non-streaming body, or None when the stream is incomplete or errored.

        `usage` is used only when the stream carried none: an OpenAI client
        that did not ask for `stream_options.include_usage` never sees it, but
        the relay read it upstream. An OpenAI body with no usage either way is
        None, since a stored answer must be able to say what it cost.
        """
        return self._acc.result(usage)


# ---------------------------------------------------------------- OpenAI


class _Choice:
    __slots__ = ("index", "role", "text", "content", "refusal", "tools", "function_call", "annotations", "extra", "logprobs", "finish_reason")

    def __init__(self, index: int) -> None:
        self.index = index
        self.role = "assistant"
        self.text: list[str] = []  # legacy completions
        self.content: list[str] | None = None  # None until a string arrives (a tool call's content stays null)
        self.refusal: list[str] | None = None
        self.tools: dict[int, _ToolCall] = {}
        self.function_call: _ToolCall | None = None  # the deprecated single-function form
        self.annotations: list[Any] | None = None
        self.extra: dict[str, list[str]] = {}  # other text a server streams (vLLM/DeepSeek `reasoning_content`)
        self.logprobs: Json | None = None
        self.finish_reason: str | None = None


class _ToolCall:
    __slots__ = ("id", "type", "name", "arguments")

    def __init__(self) -> None:
        self.id: str | None = None
        self.type = "function"
        self.name = ""
        self.arguments: list[str] = []

    def take(self, fn: Any) -> None:
        if not isinstance(fn, dict):
            return
        if fn.get("name") and not self.name:
            self.name = fn["name"]  # sent once; some servers repeat it, never split it
        if isinstance(fn.get("arguments"), str):
            self.arguments.append(fn["arguments"])

    def function(self) -> Json:
        return {"name": self.name, "arguments": "".join(self.arguments)}


class _OpenAIStream:
    def __init__(self, endpoint: str) -> None:
        self.chat = endpoint == "chat.completions"
        self.broken = False
        self.done = False
        self.head: Json | None = None  # top-level fields of the first chunk (id, created, model, …)
        self.usage: Json | None = None
        self.choices: dict[int, _Choice] = {}

    def event(self, name: str | None, data: str) -> None:
        if data == "[DONE]":
            self.done = True
            return
        obj = _loads(data)
        if obj is None or obj.get("error") or name == "error":
            self.broken = True
            return
        choices = obj.get("choices")
        if self.head is None and obj.get("id") and choices:  # Azure's first chunk has an empty id and no choices
            self.head = {k: v for k, v in obj.items() if k not in ("choices", "usage", "object", "obfuscation")}
        usage = obj.get("usage")
        if isinstance(usage, dict) and usage:
            self.usage = usage
        for c in choices if isinstance(choices, list) else ():
            if isinstance(c, dict):
                self._choice(c)

    def _choice(self, c: Json) -> None:
        index = c.get("index", 0)
        if not isinstance(index, int):
            self.broken = True
            return
        ch = self.choices.get(index)
        if ch is None:
            ch = self.choices[index] = _Choice(index)
        if self.chat:
            delta = c.get("delta")
            if isinstance(delta, dict) and delta:
                self._delta(ch, delta)
        elif isinstance(c.get("text"), str):
            ch.text.append(c["text"])
        logprobs = c.get("logprobs")
        if isinstance(logprobs, dict):
            ch.logprobs = _merge_logprobs(ch.logprobs, logprobs)
        if c.get("finish_reason"):
            ch.finish_reason = c["finish_reason"]

    def _delta(self, ch: _Choice, delta: Json) -> None:
        if isinstance(delta.get("role"), str):
            ch.role = delta["role"]
        content = delta.get("content")
        if isinstance(content, str):
            ch.content = _append(ch.content, content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str):
            ch.refusal = _append(ch.refusal, refusal)
        annotations = delta.get("annotations")
        if isinstance(annotations, list):
            if ch.annotations is None:
                ch.annotations = []
            ch.annotations.extend(annotations)
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            position = call.get("index", len(ch.tools))
            tool = ch.tools.get(position)
            if tool is None:
                tool = ch.tools[position] = _ToolCall()
            if call.get("id") and tool.id is None:
                tool.id = call["id"]
            if isinstance(call.get("type"), str):
                tool.type = call["type"]
            tool.take(call.get("function"))
        if isinstance(delta.get("function_call"), dict):
            if ch.function_call is None:
                ch.function_call = _ToolCall()
            ch.function_call.take(delta["function_call"])
        for key, value in delta.items():
            if isinstance(value, str) and key not in MESSAGE_FIELDS:
                ch.extra.setdefault(key, []).append(value)

    def result(self, usage: TokenUsage | None) -> Json | None:
        if self.broken or not self.done or self.head is None or not self.choices:
            return None
        if any(ch.finish_reason is None for ch in self.choices.values()):
            return None  # a choice still open when the stream ended
        body_usage = self.usage if self.usage is not None else (openai_usage_block(usage) if usage is not None else None)
        if body_usage is None:
            return None
        choices = [self._finished(ch) for _, ch in sorted(self.choices.items())]
        obj = "chat.completion" if self.chat else "text_completion"
        head = dict(self.head)
        return {
            "id": head.pop("id"),
            "object": obj,
            "created": head.pop("created", None),
            "model": head.pop("model", None),
            "choices": choices,
            "usage": body_usage,
            **head,
        }

    def _finished(self, ch: _Choice) -> Json:
        if not self.chat:
            return {"text": "".join(ch.text), "index": ch.index, "logprobs": ch.logprobs, "finish_reason": ch.finish_reason}
        message: Json = {
            "role": ch.role,
            "content": None if ch.content is None else "".join(ch.content),
            "refusal": None if ch.refusal is None else "".join(ch.refusal),
        }
        if ch.tools:
            message["tool_calls"] = [{"id": t.id, "type": t.type, "function": t.function()} for _, t in sorted(ch.tools.items())]
        if ch.function_call is not None:
            message["function_call"] = ch.function_call.function()
        if ch.annotations is not None:
            message["annotations"] = ch.annotations
        for key, parts in ch.extra.items():
            message[key] = "".join(parts)
        return {"index": ch.index, "message": message, "logprobs": ch.logprobs, "finish_reason": ch.finish_reason}


def _append(parts: list[str] | None, text: str) -> list[str]:
    if parts is None:
        return [text]
    parts.append(text)
    return parts


def _merge_logprobs(acc: Json | None, new: Json) -> Json:
    """Token lists (chat `content`/`refusal`, legacy `tokens`, `token_logprobs`, …) are extended."""
    acc = {} if acc is None else acc
    for key, value in new.items():
        if isinstance(value, list):
            have = acc.get(key)
            if isinstance(have, list):
                have.extend(value)  # our own copy: extended in place, never re-copied
            else:
                acc[key] = list(value)
        elif key not in acc:
            acc[key] = value
    return acc


# ---------------------------------------------------------------- Anthropic

# delta type -> the block field its fragments build
_DELTA_FIELDS = {"text_delta": ("text", "text"), "thinking_delta": ("thinking", "thinking"), "input_json_delta": ("partial_json", "input")}


class _Block:
    __slots__ = ("block", "field", "parts", "stopped")

    def __init__(self, block: Json) -> None:
        self.block = block
        self.field: str | None = None
        self.parts: list[str] = []
        self.stopped = False

    def finished(self) -> Json | None:
        block = dict(self.block)  # a copy: result() may be asked twice
        if self.field == "input":
            raw = "".join(self.parts)
            if raw.strip():
                value = _loads(raw)
                if value is None:
                    return None  # a tool input that is not a JSON object: not an answer to store
                block["input"] = value
        elif self.field is not None:
            start = block.get(self.field)
            block[self.field] = (start if isinstance(start, str) else "") + "".join(self.parts)
        return block


class _AnthropicStream:
    def __init__(self) -> None:
        self.broken = False
        self.done = False
        self.message: Json | None = None
        self.usage: Json = {}
        self.blocks: dict[int, _Block] = {}

    def event(self, name: str | None, data: str) -> None:
        obj = _loads(data)
        if obj is None:
            self.broken = True
            return
        kind = name or obj.get("type")
        if kind == "message_start":
            message = obj.get("message")
            if not isinstance(message, dict) or self.message is not None:
                self.broken = True
                return
            self.message = dict(message)
            self.usage = dict(message.get("usage") or {})
        elif kind == "content_block_start":
            self._start(obj)
        elif kind == "content_block_delta":
            self._delta(obj)
        elif kind == "content_block_stop":
            block = self.blocks.get(obj.get("index"))  # type: ignore[arg-type]
            if block is None:
                self.broken = True
            else:
                block.stopped = True
        elif kind == "message_delta":
            if self.message is None:
                self.broken = True
                return
            delta = obj.get("delta")
            self.message.update(delta if isinstance(delta, dict) else {})
            # usage counts are cumulative totals; fields left out keep their message_start values
            usage = obj.get("usage")
            self.usage.update({k: v for k, v in (usage if isinstance(usage, dict) else {}).items() if v is not None})
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            self.broken = True
        # ping and event types from the future carry nothing to store

    def _start(self, obj: Json) -> None:
        index, block = obj.get("index"), obj.get("content_block")
        if not isinstance(index, int) or not isinstance(block, dict) or index in self.blocks:
            self.broken = True
            return
        self.blocks[index] = _Block(dict(block))

    def _delta(self, obj: Json) -> None:
        block = self.blocks.get(obj.get("index"))  # type: ignore[arg-type]
        delta = obj.get("delta")
        if block is None or block.stopped or not isinstance(delta, dict):
            self.broken = True
            return
        kind = delta.get("type")
        if kind == "signature_delta":
            block.block["signature"] = delta.get("signature")
            return
        if kind == "citations_delta":
            citations = block.block.get("citations")
            if not isinstance(citations, list):
                citations = block.block["citations"] = []
            citations.append(delta.get("citation"))
            return
        spec = _DELTA_FIELDS.get(kind)  # type: ignore[arg-type]
        if spec is None or (block.field is not None and block.field != spec[1]):
            self.broken = True  # a delta we cannot place: the stored body would be wrong
            return
        fragment = delta.get(spec[0])
        if not isinstance(fragment, str):
            self.broken = True
            return
        block.field = spec[1]
        block.parts.append(fragment)

    def result(self, usage: TokenUsage | None) -> Json | None:
        if self.broken or not self.done or self.message is None or not self.message.get("stop_reason"):
            return None
        content: list[Json] = []
        for _, block in sorted(self.blocks.items()):
            done = block.finished() if block.stopped else None
            if done is None:
                return None
            content.append(done)
        message = dict(self.message)
        message["content"] = content
        message["usage"] = dict(self.usage) if self.usage or usage is None else anthropic_usage_block(usage)
        return message


# ---------------------------------------------------------------- helpers


def _success_object(wire: str, endpoint: str) -> str:
    expected = SUCCESS_OBJECTS.get((wire, endpoint))
    if expected is None:
        raise ValueError(f"no response body for {wire} {endpoint}")
    return expected


def _loads(data: bytes | bytearray | memoryview | str) -> Any:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
