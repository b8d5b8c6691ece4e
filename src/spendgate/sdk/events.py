"""One SDK call → one `UsageEvent`: what the call asked, what the response told.

A `Recorder` lives for one call. The instrumented method feeds it the
response (or each stream chunk, or the exception) and it turns that into the
same `UsageEvent` the gateway's meter writes, priced with the same catalog,
and hands it to the sink exactly once. Prompt and response text are only
ever read for a token estimate when the provider reported no usage; they are
never stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from spendgate.controls.tags import SINGLE_PREFIX, TAGS_HEADER, header_tags, validate_tags
from spendgate.config import TagRules
from spendgate.errors import GatewayError
from spendgate.fingerprint import request_hash
from spendgate.ledger.events import UsageEvent, new_id
from spendgate.pricing.catalog import PriceCatalog, TokenUsage
from spendgate.pricing.prompt_cache import SAVED_BY, prompt_cache_saved, uses_prompt_cache
from spendgate.wire import anthropic as anthropic_wire
from spendgate.wire import openai as openai_wire
from spendgate.wire.usage import from_anthropic, from_openai, to_anthropic

log = logging.getLogger("spendgate.sdk")

# Arguments of an SDK method that are client options, not part of the request body.
SDK_OPTIONS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})
_TAG_RULES = TagRules()
_warned_tags: set[str] = set()


class Sink(Protocol):
    """Where finished events go (see `spendgate.sdk.sinks`). `submit` must never block."""

    def submit(self, event: UsageEvent) -> None: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self, timeout: float = 10.0) -> bool: ...


def is_not_given(value: Any) -> bool:
    """The SDKs' `NOT_GIVEN` / `omit` sentinels (openai and anthropic each have their own)."""
    return type(value).__name__ in ("NotGiven", "Omit")


def split_spendgate_headers(extra_headers: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """`extra_headers` without any `x-spendgate-*` header, and the tags those headers carried.

    The headers are for spendgate only; they never reach the provider.
    """
    if not extra_headers:
        return (None if extra_headers is None else dict(extra_headers)), {}
    kept: dict[str, Any] = {}
    ours: dict[str, str] = {}
    for name, value in extra_headers.items():
        lower = name.lower()
        if lower.startswith(SINGLE_PREFIX):
            if isinstance(value, str):
                ours[lower] = value
        else:
            kept[name] = value
    if not ours:
        return dict(extra_headers), {}
    try:
        tags = header_tags(ours)
    except GatewayError as err:
        log.warning("spendgate: ignoring the malformed %s header: %s", TAGS_HEADER, err.message)
        ours.pop(TAGS_HEADER, None)
        tags = header_tags(ours)
    return kept, tags


def valid_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The tags the gateway would accept; an invalid one is dropped (warned once), never fatal."""
    out: dict[str, str] = {}
    for name, value in tags.items():
        try:
            validate_tags({name: value}, _TAG_RULES)
        except GatewayError as err:
            if name not in _warned_tags:
                _warned_tags.add(name)
                log.warning("spendgate: dropping tag %r: %s", name, err.message)
            continue
        out[name] = value
    return out


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def fingerprint(body: dict[str, Any]) -> str | None:
    """The gateway's `request_hash` of the body the SDK will send (stream options ignored)."""
    try:
        try:
            return request_hash(body)
        except TypeError:  # a pydantic model or a type among the arguments
            return request_hash(orjson.loads(orjson.dumps(body, default=_jsonable)))
    except Exception:  # never let fingerprinting break a call
        log.debug("spendgate: could not fingerprint a request", exc_info=True)
        return None


@dataclass(slots=True)
class CallInfo:
    """What is known before the call is made."""

    endpoint: str  # chat.completions | completions | embeddings | messages
    wire_format: str  # openai | anthropic
    provider: str  # openai | azure_openai | anthropic | gemini | openai_compatible
    model_requested: str
    streamed: bool
    tags: dict[str, str]
    body: dict[str, Any]  # kept only for a token estimate; never stored
    request_hash: str | None = None


def _dump(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj
    dump = getattr(obj, "model_dump", None)
    return dump() if callable(dump) else None


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)  # the gateway's estimate, kept identical


@dataclass(slots=True)
class Recorder:
    """Collects one call's outcome; `finish` emits its single event (later calls are no-ops)."""

    info: CallInfo
    catalog: PriceCatalog
    sink: Sink
    ts_start: float = field(default_factory=time.time)
    _t0: float = field(default_factory=time.perf_counter)
    usage: TokenUsage = field(default_factory=TokenUsage)
    usage_known: bool = False
    _anthropic_usage: dict[str, Any] | None = None
    model_used: str | None = None
    finish_reason: str | None = None
    ttft_ms: float | None = None
    content_events: int = 0
    output_chars: int = 0
    complete: bool = False
    _done: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- what responses tell ------------------------------------------------

    def first_chunk(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = round((time.perf_counter() - self._t0) * 1000, 3)

    def openai_response(self, resp: Any) -> None:
        """ChatCompletion, Completion or CreateEmbeddingResponse."""
        self.model_used = getattr(resp, "model", None) or self.model_used
        usage = _dump(getattr(resp, "usage", None))
        if usage:
            self.usage = from_openai(usage)
            self.usage_known = True
        for choice in getattr(resp, "choices", None) or ():
            if getattr(choice, "finish_reason", None):
                self.finish_reason = choice.finish_reason
            if not self.usage_known:
                message = getattr(choice, "message", None)
                text = getattr(message, "content", None) if message is not None else getattr(choice, "text", None)
                if isinstance(text, str):
                    self.output_chars += len(text)
        self.complete = True

    def openai_chunk(self, chunk: Any) -> bool:
        """Read one stream chunk; True when it is a usage-only chunk (no choices)."""
        if self.model_used is None:
            self.model_used = getattr(chunk, "model", None) or None
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = from_openai(_dump(usage))
            self.usage_known = True
        choices = getattr(chunk, "choices", None)
        if not choices:
            return usage is not None
        self.content_events += 1
        for choice in choices:
            if getattr(choice, "finish_reason", None):
                self.finish_reason = choice.finish_reason
        return False

    def anthropic_message(self, msg: Any) -> None:
        self.model_used = getattr(msg, "model", None) or self.model_used
        usage = _dump(getattr(msg, "usage", None))
        if usage:
            self.usage = from_anthropic(usage)
            self.usage_known = True
        self.finish_reason = getattr(msg, "stop_reason", None) or self.finish_reason
        if not self.usage_known:
            for block in getattr(msg, "content", None) or ():
                text = getattr(block, "text", None)
                if isinstance(text, str):
                    self.output_chars += len(text)
        self.complete = True

    def anthropic_event(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "content_block_delta":
            self.content_events += 1
        elif kind == "message_start":
            msg = getattr(event, "message", None)
            self.model_used = getattr(msg, "model", None) or self.model_used
            self._anthropic_usage = _dump(getattr(msg, "usage", None)) or {}
            self.usage = from_anthropic(self._anthropic_usage)
        elif kind == "message_delta":
            reason = getattr(getattr(event, "delta", None), "stop_reason", None)
            if reason:
                self.finish_reason = reason
            delta_usage = _dump(getattr(event, "usage", None))
            if delta_usage:
                # message_delta usage is cumulative; fields it leaves out keep their start values
                start = self._anthropic_usage if self._anthropic_usage is not None else to_anthropic(self.usage)
                merged = {**start, **{k: v for k, v in delta_usage.items() if v is not None}}
                self._anthropic_usage = merged
                self.usage = from_anthropic(merged)
                self.usage_known = True
        elif kind == "message_stop":
            self.complete = True

    # --- the end --------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done

    def finish(self, status: str = "ok", exc: BaseException | None = None) -> UsageEvent | None:
        """Build, price and submit the event, once; never raises into the caller's code."""
        with self._lock:
            if self._done:
                return None
            self._done = True
        try:
            event = self._event(status, exc)
        except Exception:
            log.exception("spendgate: could not build a usage event")
            return None
        try:
            self.sink.submit(event)
        except Exception:
            log.exception("spendgate: the sink refused a usage event")
        return event

    def _estimated_usage(self) -> TokenUsage:
        u = self.usage
        wire = anthropic_wire if self.info.wire_format == "anthropic" else openai_wire
        try:
            text = wire.prompt_text(self.info.body)
        except Exception:  # an unusual body shape: estimate from nothing
            text = ""
        output = max(u.output_tokens, self.content_events)
        if not output and self.output_chars:
            output = max(1, self.output_chars // 4)
        return TokenUsage(
            input_tokens=u.input_tokens or _estimate_tokens(text),
            output_tokens=output,
            cache_read_tokens=u.cache_read_tokens,
            cache_write_tokens=u.cache_write_tokens,
            reasoning_tokens=u.reasoning_tokens,
            cache_write_1h_tokens=u.cache_write_1h_tokens,
        )

    def _event(self, status: str, exc: BaseException | None) -> UsageEvent:
        elapsed = time.perf_counter() - self._t0
        info = self.info
        if self.usage_known:
            usage, usage_source = self.usage, "provider"
        elif status == "error" and not self.content_events and not self.usage.input_tokens:
            usage, usage_source = TokenUsage(), "none"  # the call failed before any tokens
        else:
            usage, usage_source = self._estimated_usage(), "estimated"
        model_used = self.model_used or info.model_requested
        ev = UsageEvent(
            request_id=new_id(),
            ts_start=self.ts_start,
            ts_end=self.ts_start + elapsed,
            latency_ms=round(elapsed * 1000, 3),
            ttft_ms=self.ttft_ms if info.streamed else None,
            endpoint=info.endpoint,
            wire_format=info.wire_format,
            provider=info.provider,
            model_requested=info.model_requested,
            model_used=model_used,
            streamed=info.streamed,
            status=status,
            http_status=_http_status(exc) if exc is not None else (200 if status != "error" else None),
            error_type=type(exc).__name__ if exc is not None else None,
            finish_reason=self.finish_reason,
            source="sdk",
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            usage_source=usage_source,
            request_hash=info.request_hash,
        )
        ev.apply_tags(info.tags)
        if usage.input_tokens or usage.output_tokens:
            priced = self.catalog.price(info.provider, model_used, usage)
            ev.cost, ev.list_cost, ev.price_source = priced.cost, priced.list_cost, priced.source
            ev.price_status = "estimated" if priced.status == "priced" and usage_source == "estimated" else priced.status
            if priced.status == "priced" and uses_prompt_cache(usage):
                saved = prompt_cache_saved(self.catalog, info.provider, model_used, usage, priced.cost)
                if saved is not None:
                    ev.saved, ev.saved_by = saved, SAVED_BY
        else:
            ev.price_status = "priced"
            ev.price_source = "no-usage"
        return ev


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


