"""The proxy's side of the cache: answer a hit (JSON or an SSE replay in the
client's format) and record it; keep a successful answer of a planned miss.

A hit is one ledger event: cost 0 (the embedding model is local), `saved` =
the list cost of the call it replaced, `route_reason=cache`, the cache
status, scope and similarity. No prompt or response text is logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

import orjson

from spendgate.asgi import SSE_HEADERS, Send, send_json, start_response
from spendgate.cache.capture import StreamCapture, complete_body
from spendgate.cache.replay import replay_json, replay_sse
from spendgate.cache.stage import CacheStage, Hit
from spendgate.ledger.events import UsageEvent
from spendgate.meter import attribute
from spendgate.pipeline import Call
from spendgate.pricing.catalog import TokenUsage

ZERO = Decimal(0)


def hit_event(call: Call, hit: Hit) -> UsageEvent:
    e = hit.entry
    now = time.time()
    ev = UsageEvent(
        request_id=call.request_id,
        attempt=1,
        ts_start=call.ts_start,
        ts_end=now,
        latency_ms=round((now - call.ts_start) * 1000, 3),
        endpoint=call.endpoint,
        wire_format=call.wire,
        provider=e.provider,
        deployment=e.deployment,
        model_requested=call.requested_model,
        model_used=e.model_used,
        route_reason="cache",
        streamed=call.stream,
        status="ok",
        http_status=200,
        key_id=call.key_id,
        usage_source="none",
        cost=ZERO,
        list_cost=ZERO,
        saved=e.list_cost,
        saved_by="cache",
        price_status="priced",
        price_source="cache",
        cache_status=hit.status,
        cache_scope=call.cache_scope,
        similarity=hit.similarity,
        request_hash=call.request_hash,
    )
    attribute(ev, call)
    return ev


async def serve_hit(call: Call, send: Send, headers: list[tuple[bytes, bytes]], submit: Callable[[UsageEvent], None]) -> None:
    """Answer from the cache, then record the hit (also when the client left mid-replay)."""
    hit: Hit = call.cache_hit
    stored = orjson.loads(hit.entry.body)
    out_headers = [*headers, (b"x-spendgate-cost", b"0")]
    try:
        if call.stream:
            frames = replay_sse(call.wire, call.endpoint, stored, request_id=call.request_id, include_usage=call.client_wants_usage)
            await start_response(send, 200, [*SSE_HEADERS, *out_headers])
            await send({"type": "http.response.body", "body": b"".join(frames), "more_body": False})
        else:
            await send_json(send, 200, replay_json(call.wire, call.endpoint, stored, request_id=call.request_id), out_headers)
    finally:
        submit(hit_event(call, hit))


class MissRecorder:
    """Collects a planned miss's answer as it is relayed, and stores it if it completed."""

    __slots__ = ("stage", "call", "capture")

    def __init__(self, stage: CacheStage, call: Call) -> None:
        self.stage = stage
        self.call = call
        self.capture = StreamCapture(call.wire, call.endpoint) if call.stream else None

    def feed(self, chunk: bytes) -> None:
        if self.capture is not None and chunk:
            self.capture.feed(chunk)

    def done(self, event: UsageEvent, body: bytes | None = None) -> None:
        """The attempt ended: store its answer if it is a complete success."""
        if event.status != "ok":
            return
        call = self.call
        if self.capture is not None:
            # the client may not have asked for usage in its stream; the ledger event has it
            usage = TokenUsage(
                input_tokens=event.input_tokens, output_tokens=event.output_tokens, cache_read_tokens=event.cache_read_tokens,
                cache_write_tokens=event.cache_write_tokens, reasoning_tokens=event.reasoning_tokens,
            )  # fmt: skip
            full = self.capture.result(usage)
            if full is None:
                return
            body = orjson.dumps(full)
        elif body is None or complete_body(call.wire, call.endpoint, body) is None:
            return  # an error object, no choices, an unfinished choice: never an answer to serve
        self.stage.remember(
            call, body, cost=event.cost, list_cost=event.list_cost, input_tokens=event.input_tokens,
            output_tokens=event.output_tokens, provider=event.provider, deployment=event.deployment,
            model_used=event.model_used, finish_reason=event.finish_reason,
        )  # fmt: skip
