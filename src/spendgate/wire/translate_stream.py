"""Streams across wire formats, one event at a time, with no buffering.

Each translator is a small state machine for one response: it is fed the
upstream's parsed events as they arrive and returns the client's events to
send right away. Both keep the usage seen so far, so a stream cut short still
yields what it cost up to that point.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from spendgate.pricing.catalog import TokenUsage
from spendgate.wire.translate_request import anthropic_tool_id, dump_input
from spendgate.wire.translate_response import (
    anthropic_error_to_openai,
    anthropic_id_for,
    anthropic_usage_block,
    finish_reason_for,
    openai_error_to_anthropic,
    openai_id_for,
    openai_usage_block,
    read_anthropic_usage,
    read_openai_usage,
    stop_reason_for,
)

Json = dict[str, Any]
Event = tuple[str, Json]


class AnthropicStreamToOpenAI:
    """Anthropic Messages SSE events -> OpenAI `chat.completion.chunk` objects.

    `finish_reason` is the OpenAI finish reason sent to the client, and
    `stop_reason` the Anthropic one received; both stay None until the upstream
    says why it stopped. Error events come back as an OpenAI error object
    (`{"error": {...}}`), which is how OpenAI reports errors inside a stream.
    """

    def __init__(self, model: str, include_usage: bool = False) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = openai_id_for(None)
        self.created = int(time.time())
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None
        self._usage: Json = {}
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self._role_sent = False
        self._usage_sent = False

    @property
    def usage(self) -> TokenUsage:
        return read_anthropic_usage(self._usage)

    def feed(self, event_type: str | None, data: Json) -> list[Json]:
        handler = getattr(self, f"_on_{event_type or data.get('type')}", None)
        return handler(data) if handler is not None else []  # ping and future event types

    def finish(self) -> list[Json]:
        """Chunks still owed when the upstream ends without `message_stop`."""
        if not self.include_usage or self._usage_sent or not self._role_sent:
            return []
        self._usage_sent = True
        return [self._usage_chunk()]

    # -- events

    def _on_message_start(self, data: Json) -> list[Json]:
        message = data.get("message") or {}
        self.id = openai_id_for(message.get("id"))
        self._merge_usage(message.get("usage"))
        return self._role()

    def _on_content_block_start(self, data: Json) -> list[Json]:
        block = data.get("content_block") or {}
        if block.get("type") == "text" and block.get("text"):
            return [*self._role(), self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use":
            return []  # thinking and server-tool blocks have no chat-completions form
        position = len(self._tool_index)
        self._tool_index[int(data.get("index", 0))] = position
        arguments = dump_input(block["input"]) if block.get("input") else ""
        function = {"name": block.get("name"), "arguments": arguments}
        call = {"index": position, "id": block.get("id"), "type": "function", "function": function}
        return [*self._role(), self._chunk({"tool_calls": [call]})]

    def _on_content_block_delta(self, data: Json) -> list[Json]:
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [*self._role(), self._chunk({"content": delta["text"]})]
        position = self._tool_index.get(int(data.get("index", -1)))
        if delta.get("type") == "input_json_delta" and position is not None and delta.get("partial_json"):
            call = {"index": position, "function": {"arguments": delta["partial_json"]}}
            return [*self._role(), self._chunk({"tool_calls": [call]})]
        return []

    def _on_message_delta(self, data: Json) -> list[Json]:
        self._merge_usage(data.get("usage"))
        stop = (data.get("delta") or {}).get("stop_reason")
        if not stop:
            return []
        self.stop_reason = stop
        self.finish_reason = finish_reason_for(stop)
        return [*self._role(), self._chunk({}, self.finish_reason)]

    def _on_message_stop(self, data: Json) -> list[Json]:
        return self.finish()

    def _on_error(self, data: Json) -> list[Json]:
        return [anthropic_error_to_openai(200, data)]

    # -- helpers

    def _merge_usage(self, usage: Json | None) -> None:
        """message_delta counts are cumulative: later non-null values replace earlier ones."""
        for key, value in (usage or {}).items():
            if value is not None:
                self._usage[key] = value

    def _role(self) -> list[Json]:
        if self._role_sent:
            return []
        self._role_sent = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _chunk(self, delta: Json, finish_reason: str | None = None) -> Json:
        chunk: Json = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _usage_chunk(self) -> Json:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": openai_usage_block(self.usage),
        }


class OpenAIStreamToAnthropic:
    """OpenAI `chat.completion.chunk` objects -> Anthropic Messages SSE events.

    Anthropic content is a sequence of blocks, so text and each tool call get a
    block of their own, opened on first sight and closed when the next starts.
    `message_delta` waits for `finish()`, because OpenAI sends its usage chunk
    after the chunk with the finish reason. `finish_reason` is the OpenAI
    reason received, `stop_reason` the Anthropic one sent.

    OpenAI streams one tool call after another; an argument fragment for a
    call whose block was already closed cannot be sent and is counted in
    `dropped_fragments`.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = anthropic_id_for(None)
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None
        self.dropped_fragments = 0
        self._usage: Json | None = None
        self._started = False
        self._finished = False
        self._refused = False
        self._next_block = 0
        self._open: int | None = None  # index of the open block
        self._open_kind: str | None = None  # "text" | "tool_use"
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool_calls index -> block index

    @property
    def usage(self) -> TokenUsage:
        return read_openai_usage(self._usage)

    def feed(self, chunk: Json) -> list[Event]:
        if isinstance(chunk.get("error"), (dict, str)) and not chunk.get("choices"):
            return [("error", openai_error_to_anthropic(200, chunk))]
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        events = self._start(chunk.get("id"))
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # only one choice can be served: we never ask for n > 1
            events += self._delta(choice.get("delta") or {})
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                events += self._close()
        return events

    def finish(self) -> list[Event]:
        """Closing events, once the upstream stream has ended (`[DONE]`)."""
        if self._finished:
            return []
        self._finished = True
        stop = stop_reason_for(self.finish_reason)
        if self._refused and stop == "end_turn":
            stop = "refusal"
        self.stop_reason = stop
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": anthropic_usage_block(self.usage),
        }
        closing: list[Event] = [("message_delta", delta), ("message_stop", {"type": "message_stop"})]
        return [*self._start(None), *self._close(), *closing]

    # -- helpers

    def _start(self, completion_id: Any) -> list[Event]:
        if self._started:
            return []
        self._started = True
        if completion_id:
            self.id = anthropic_id_for(completion_id)
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": anthropic_usage_block(self.usage),
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _delta(self, delta: Json) -> list[Event]:
        events: list[Event] = []
        if delta.get("content"):
            events += self._text(delta["content"])
        if delta.get("refusal"):
            self._refused = True
            events += self._text(delta["refusal"])
        for call in delta.get("tool_calls") or []:
            events += self._tool(call)
        return events

    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open_kind != "text":
            events = [*self._close(), *self._open_block("text", {"type": "text", "text": ""})]
        delta = {"type": "content_block_delta", "index": self._open, "delta": {"type": "text_delta", "text": text}}
        return [*events, ("content_block_delta", delta)]

    def _tool(self, call: Json) -> list[Event]:
        position = int(call.get("index", 0))
        fn = call.get("function") or {}
        events: list[Event] = []
        if position not in self._tool_blocks:
            block = {
                "type": "tool_use",
                "id": anthropic_tool_id(call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}"),
                "name": fn.get("name") or "",
                "input": {},
            }
            events += [*self._close(), *self._open_block("tool_use", block)]
            self._tool_blocks[position] = self._open  # type: ignore[assignment]
        fragment = fn.get("arguments")
        if not fragment:
            return events
        if self._tool_blocks[position] != self._open:
            self.dropped_fragments += 1
            return events
        json_delta = {"type": "input_json_delta", "partial_json": fragment}
        delta = {"type": "content_block_delta", "index": self._open, "delta": json_delta}
        return [*events, ("content_block_delta", delta)]

    def _open_block(self, kind: str, block: Json) -> list[Event]:
        self._open, self._open_kind = self._next_block, kind
        self._next_block += 1
        return [("content_block_start", {"type": "content_block_start", "index": self._open, "content_block": block})]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        index, self._open, self._open_kind = self._open, None, None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]
