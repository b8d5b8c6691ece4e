"""Streaming relays: bytes go to the client as they arrive; usage is read on the way.

One relay object per response. `feed` takes raw upstream bytes and returns
the bytes for the client (whole SSE events only, so a stripped or translated
event is never split). Same-format relays forward the upstream's bytes
unchanged and parse JSON only for the few events that carry usage, the model
or a finish reason.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from spendgate.pricing.catalog import TokenUsage
from spendgate.wire import usage as wire_usage
from spendgate.wire.sse import DONE, SSEParser, frame
from spendgate.wire.translate_stream import AnthropicStreamToOpenAI, OpenAIStreamToAnthropic

_NULL_USAGE = (b'"usage":null', b'"usage": null')
_NULL_FINISH = (b'"finish_reason":null', b'"finish_reason": null')


class StreamRelay(Protocol):
    complete: bool  # the upstream stream ended properly
    usage: TokenUsage
    usage_known: bool  # a usage block was seen (else estimate)
    content_events: int  # ≈ output tokens, for estimates
    finish_reason: str | None
    model_used: str | None
    text: list[str] | None  # response text, only when capture is on
    upstream_error: str | None  # an error event the upstream sent in the stream (relayed as is)

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def error_event(self, message: str) -> bytes: ...


def _openai_error_event(message: str) -> bytes:
    return frame(orjson.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": "stream_interrupted"}}))


def _anthropic_error_event(message: str) -> bytes:
    return frame(orjson.dumps({"type": "error", "error": {"type": "api_error", "message": message}}), "error")


class _Base:
    def __init__(self, capture: bool) -> None:
        self.parser = SSEParser()
        self.complete = False
        self.usage = TokenUsage()
        self.usage_known = False
        self.content_events = 0
        self.finish_reason: str | None = None
        self.model_used: str | None = None
        self.text: list[str] | None = [] if capture else None
        self.upstream_error: str | None = None


class OpenAIPassthrough(_Base):
    """OpenAI upstream, OpenAI client."""

    def __init__(self, strip_usage: bool, capture: bool) -> None:
        super().__init__(capture)
        self.strip_usage = strip_usage

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for ev in self.parser.feed(chunk):
            raw = ev.raw
            if ev.data == "[DONE]":
                self.complete = True
                out.append(raw)
                continue
            need_parse = self.model_used is None or self.text is not None
            has_usage = b'"usage"' in raw and not any(n in raw for n in _NULL_USAGE)
            has_finish = b'"finish_reason"' in raw and not any(n in raw for n in _NULL_FINISH)
            if need_parse or has_usage or has_finish or b'"error"' in raw:
                data = _loads(ev.data)
                if data is not None:
                    if not self._read(data) and self.strip_usage:
                        continue  # the usage-only chunk the client did not ask for
                    if has_usage and self.strip_usage and "usage" in data:
                        # usage riding on a content chunk (vLLM, Groq): hide it too
                        raw = frame(orjson.dumps({k: v for k, v in data.items() if k != "usage"}))
            else:
                self.content_events += 1
            if self.strip_usage and b'"usage"' in raw:
                raw = raw.replace(b',"usage":null', b"").replace(b', "usage": null', b"")
            out.append(raw)
        return b"".join(out)

    def _read(self, data: dict[str, Any]) -> bool:
        """Take what the chunk tells; False for a usage-only chunk."""
        if isinstance(data.get("error"), dict):
            self.upstream_error = str(data["error"].get("type") or data["error"].get("code") or "upstream_error")
            return True
        if self.model_used is None and isinstance(data.get("model"), str):
            self.model_used = data["model"]
        usage = data.get("usage")
        if isinstance(usage, dict) and usage:
            self.usage = wire_usage.from_openai(usage)
            self.usage_known = True
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            return not usage
        self.content_events += 1
        for c in choices:
            if not isinstance(c, dict):
                continue
            if c.get("finish_reason"):
                self.finish_reason = c["finish_reason"]
            if self.text is not None:
                delta = c.get("delta")
                content = delta.get("content") if isinstance(delta, dict) else c.get("text")
                self.text.append(content if isinstance(content, str) else "")
        return True

    def finish(self) -> bytes:
        return b""

    def error_event(self, message: str) -> bytes:
        return _openai_error_event(message)


class AnthropicPassthrough(_Base):
    """Anthropic upstream, Anthropic client."""

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for ev in self.parser.feed(chunk):
            kind = ev.event or (_loads(ev.data) or {}).get("type")  # some servers omit `event:`
            if kind == "content_block_delta":
                self.content_events += 1
                if self.text is not None:
                    delta = (_loads(ev.data) or {}).get("delta")
                    text = delta.get("text") if isinstance(delta, dict) else None
                    self.text.append(text if isinstance(text, str) else "")
            elif kind in ("message_start", "message_delta", "error"):
                self._read(kind, _loads(ev.data) or {})
            elif kind == "message_stop":
                self.complete = True
            out.append(ev.raw)
        return b"".join(out)

    def _read(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "error":
            err = data.get("error")
            self.upstream_error = str(err.get("type") if isinstance(err, dict) else "upstream_error")
            return
        if kind == "message_start":
            msg = data.get("message")
            msg = msg if isinstance(msg, dict) else {}
            self.model_used = msg.get("model") if isinstance(msg.get("model"), str) else None
            self.usage = wire_usage.from_anthropic(msg.get("usage"))
            return
        delta = data.get("delta")
        if isinstance(delta, dict) and delta.get("stop_reason"):
            self.finish_reason = delta["stop_reason"]
        usage = data.get("usage")
        if isinstance(usage, dict) and usage:
            # message_delta usage is cumulative; fields it omits keep their start values
            start = wire_usage.to_anthropic(self.usage)
            self.usage = wire_usage.from_anthropic({**start, **{k: v for k, v in usage.items() if v is not None}})
            self.usage_known = True

    def finish(self) -> bytes:
        return b""

    def error_event(self, message: str) -> bytes:
        return _anthropic_error_event(message)


class AnthropicToOpenAI(_Base):
    """Anthropic upstream, OpenAI client."""

    def __init__(self, model: str, include_usage: bool, capture: bool) -> None:
        super().__init__(capture)
        self.translator = AnthropicStreamToOpenAI(model, include_usage)

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for ev in self.parser.feed(chunk):
            data = _loads(ev.data)
            if data is None:
                continue
            kind = ev.event or data.get("type", "")
            if kind == "content_block_delta":
                self.content_events += 1
                if self.text is not None:
                    self.text.append((data.get("delta") or {}).get("text", ""))
            elif kind == "message_start":
                self.model_used = (data.get("message") or {}).get("model")
            elif kind == "message_delta" and data.get("usage"):
                self.usage_known = True
            elif kind == "error":
                err = data.get("error")
                self.upstream_error = str(err.get("type") if isinstance(err, dict) else "upstream_error")
            for c in self.translator.feed(kind, data):
                out.append(frame(orjson.dumps(c)))
            if kind == "message_stop":
                self.complete = True
                out.append(DONE)
        self.usage = self.translator.usage
        self.finish_reason = self.translator.stop_reason  # the upstream's own vocabulary
        return b"".join(out)

    def finish(self) -> bytes:
        return b""

    def error_event(self, message: str) -> bytes:
        return _openai_error_event(message)


class OpenAIToAnthropic(_Base):
    """OpenAI upstream, Anthropic client."""

    def __init__(self, model: str, capture: bool) -> None:
        super().__init__(capture)
        self.translator = OpenAIStreamToAnthropic(model)

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for ev in self.parser.feed(chunk):
            if ev.data == "[DONE]":
                self.complete = True
                for name, data in self.translator.finish():
                    out.append(frame(orjson.dumps(data), name))
                continue
            data = _loads(ev.data)
            if data is None:
                continue
            if isinstance(data.get("error"), dict):
                self.upstream_error = str(data["error"].get("type") or "upstream_error")
            if self.model_used is None and isinstance(data.get("model"), str):
                self.model_used = data["model"]
            if data.get("usage"):
                self.usage_known = True
            if data.get("choices"):
                self.content_events += 1
                if self.text is not None:
                    self.text.append(((data["choices"][0].get("delta") or {}).get("content")) or "")
            for name, ev_data in self.translator.feed(data):
                out.append(frame(orjson.dumps(ev_data), name))
        self.usage = self.translator.usage
        self.finish_reason = self.translator.finish_reason
        return b"".join(out)

    def finish(self) -> bytes:
        return b""

    def error_event(self, message: str) -> bytes:
        return _anthropic_error_event(message)


def make_relay(client_wire: str, upstream_wire: str, model: str, client_wants_usage: bool, capture: bool) -> StreamRelay:
    if client_wire == upstream_wire:
        if client_wire == "openai":
            return OpenAIPassthrough(strip_usage=not client_wants_usage, capture=capture)
        return AnthropicPassthrough(capture)
    if client_wire == "openai":
        return AnthropicToOpenAI(model, client_wants_usage, capture)
    return OpenAIToAnthropic(model, capture)


def _loads(data: str) -> Any:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
