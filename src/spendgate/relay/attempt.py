"""One upstream attempt: send, read or relay the answer, meter it, record it.

An attempt ends in `Success` (the client has its answer, or a cascade step's
answer is buffered for its checks) or `Failure` (what to tell the client if
no later attempt succeeds, with a kind the failover loop acts on). Streams
are held back until the first content event: a stream that fails before it
fails over without the client seeing a byte; after it, the client gets a
clean error event in its own format.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import aiohttp
import orjson

from spendgate.asgi import SSE_HEADERS, Receive, Send, send_json, start_response
from spendgate.cache.serve import MissRecorder
from spendgate.cache.stage import CacheStage
from spendgate.config import Deployment, PrivacyConfig
from spendgate.errors import GatewayError
from spendgate.ledger.events import UsageEvent
from spendgate.meter import Attempt, Meter
from spendgate.pipeline import Call
from spendgate.pricing.catalog import TokenUsage
from spendgate.providers.adapters import Adapter
from spendgate.providers.upstream import UpstreamClient
from spendgate.relay.complete import BadUpstreamBody, estimate_tokens, read_completion
from spendgate.relay.errors import relay_error, render
from spendgate.relay.prepare import upstream_body
from spendgate.relay.stream import make_relay
from spendgate.routing.checks import Verdict
from spendgate.routing.failover import Failure, Success, kind_of_status, parse_retry_after
from spendgate.routing.health import CANCELLED, SERVER_ERROR

log = logging.getLogger("spendgate.proxy")

HOLD_BYTES = 64 * 1024  # a stream is shown to the client at its first content event, or past this much

# an error event a stream opened with -> (HTTP status for the client, error kind, failure kind)
_STREAM_ERRORS = {
    "overloaded_error": (529, "overloaded", "server"),
    "rate_limit_error": (429, "rate_limit", "rate_limited"),
    "rate_limit_exceeded": (429, "rate_limit", "rate_limited"),
}

Judge = Callable[[dict[str, Any], Deployment], Any]  # parsed upstream body -> cascade verdict (with `.ok`)


class AttemptRunner:
    def __init__(
        self,
        adapters: dict[str, Adapter],
        upstream: UpstreamClient,
        meter: Meter,
        submit: Callable[[UsageEvent], None],
        privacy: PrivacyConfig,
        cache: CacheStage | None,
    ) -> None:
        self.adapters = adapters
        self.upstream = upstream
        self.meter = meter
        self.submit = submit
        self.privacy = privacy
        self.cache = cache

    async def run(
        self,
        call: Call,
        attempt: Attempt,
        prompt: str,
        send: Send,
        receive: Receive,
        buffered: Judge | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Success | Failure:
        """`buffered`: a cascade step; the answer is read whole (never streamed),
        judged, and returned rather than sent."""
        dep = attempt.deployment
        stream = call.stream and buffered is None
        try:
            body = upstream_body(call, dep, buffered=buffered is not None, extra=extra)
        except GatewayError as err:
            return Failure(err.status, render(err, call.wire), "unservable")
        adapter = self.adapters[dep.name]
        try:
            target = adapter.target(_upstream_endpoint(call, dep), call.headers)
            resp = await self.upstream.post(target, body, dep.timeout_s, dep.connect_timeout_s, stream=stream)
        except asyncio.CancelledError:
            self._record_cancelled(call, attempt, prompt)
            raise
        except GatewayError as err:
            return self._failed(call, attempt, prompt, err, "timeout" if err.kind == "timeout" else "connection")
        try:
            if resp.status != 200:
                return await self._upstream_error(call, attempt, resp, prompt)
            if stream:
                return await self._stream(call, attempt, resp, prompt, send, receive)
            raw = await resp.read()
        except asyncio.CancelledError:
            if not attempt.recorded:
                self._record_cancelled(call, attempt, prompt)
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            err = _read_failure(exc, dep)
            return self._failed(call, attempt, prompt, err, "timeout" if err.kind == "timeout" else "connection")
        finally:
            resp.release()
        attempt.http_status = 200
        try:
            out, upstream = read_completion(raw, dep.wire, call.wire, attempt, self.privacy.store_text, prompt)
        except Exception as exc:  # noqa: BLE001 - a billed call must reach the ledger whatever the body
            log.warning("unusable upstream response from %s for request %s: %s", dep.name, call.request_id, type(exc).__name__)
            attempt.status, attempt.http_status = "error", 502
            attempt.error_type = "bad_upstream_body" if isinstance(exc, BadUpstreamBody) else "relay_error"
            if not (attempt.usage.input_tokens or attempt.usage.output_tokens):
                attempt.usage_source = "none"
            self.record(call, attempt, prompt)
            err = GatewayError(502, "The upstream provider answered with a response spendgate could not read.", "upstream")
            return Failure(502, render(err, call.wire), "bad_body")
        if buffered is not None:
            try:
                verdict = buffered(upstream, dep)
            except Exception as exc:  # noqa: BLE001 - a check that breaks must not lose a paid attempt
                # the exception's text may quote the answer (a schema error does): only its type is logged
                log.warning("cascade check failed on the answer of %s for request %s: %s", dep.name, call.request_id, type(exc).__name__)
                verdict = Verdict(False, "check_error", "")
            attempt.wasted = not verdict.ok
            event = self.record(call, attempt, prompt)
            return Success(sent=False, body=out, verdict=verdict, event=event)
        event = self.record(call, attempt, prompt)
        if call.cache_plan is not None and self.cache is not None:
            MissRecorder(self.cache, call).done(event, out)
        await send_json(send, 200, out, [*id_headers(call), (b"x-spendgate-cost", money(call.cost))])
        return Success(sent=True, event=event)

    def _failed(self, call: Call, attempt: Attempt, prompt: str, err: GatewayError, kind: str) -> Failure:
        attempt.status, attempt.http_status, attempt.error_type = "error", err.status, err.kind
        attempt.usage_source = "none"
        self.record(call, attempt, prompt)
        return Failure(err.status, render(err, call.wire), kind)

    async def _upstream_error(self, call: Call, attempt: Attempt, resp: aiohttp.ClientResponse, prompt: str) -> Failure:
        raw = await resp.read()
        out, etype = relay_error(resp.status, raw, attempt.deployment.wire, call.wire)
        attempt.status, attempt.http_status, attempt.error_type = "error", resp.status, etype
        attempt.usage_source = "none"
        if resp.status in (401, 403):
            # The provider refused *spendgate's* credentials: the client's key is
            # fine, and the provider's message may quote part of our secret.
            log.error("deployment %s: upstream refused its credentials (HTTP %d)", attempt.deployment.name, resp.status)
            attempt.error_type = "upstream_auth"
            err = GatewayError(502, f"The upstream provider refused the gateway's credentials for deployment '{attempt.deployment.name}'.", "upstream")
            self.record(call, attempt, prompt)
            return Failure(502, render(err, call.wire), "auth")
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        kind = kind_of_status(resp.status, parsed)
        if kind == "context_length":
            attempt.error_type = "context_length_exceeded"
        self.record(call, attempt, prompt)
        headers: list[tuple[bytes, bytes]] = []
        retry_after = resp.headers.get("retry-after")
        if retry_after:
            headers.append((b"retry-after", retry_after.encode()))
        wait = parse_retry_after(retry_after)
        ms = parse_retry_after(resp.headers.get("retry-after-ms"))  # Azure OpenAI: finer than the seconds
        if ms is not None:
            wait = ms / 1000
        return Failure(resp.status, out, kind, headers, wait)

    async def _stream(
        self, call: Call, attempt: Attempt, resp: aiohttp.ClientResponse, prompt: str, send: Send, receive: Receive
    ) -> Success | Failure:
        dep = attempt.deployment
        relay = make_relay(call.wire, dep.wire, call.model, call.client_wants_usage, self.privacy.store_text)
        recorder = MissRecorder(self.cache, call) if call.cache_plan is not None and self.cache is not None else None
        attempt.http_status = 200
        state = {"done": False, "disconnected": False, "shown": False}
        held: list[bytes] = []
        task = asyncio.current_task()
        assert task is not None

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    # a client that leaves once it has the whole answer (SDKs close on `[DONE]`,
                    # while the upstream's end of body may still be on its way) got what it paid
                    # for: finish normally, so the call is recorded as answered and cached
                    if not state["done"] and not relay.complete:
                        state["disconnected"] = True
                        task.cancel()
                    return

        async def show(out: bytes, more: bool = True) -> None:
            if not state["shown"]:
                state["shown"] = True
                await start_response(send, 200, [*SSE_HEADERS, *id_headers(call)])
                if held:
                    out = b"".join(held) + out
                    held.clear()
            await send({"type": "http.response.body", "body": out, "more_body": more})

        watcher = asyncio.ensure_future(watch_disconnect())
        try:
            try:
                held_size = 0
                async for chunk in resp.content.iter_any():
                    if attempt.ttft_ms is None:
                        attempt.ttft_ms = round((time.time() - attempt.ts_start) * 1000, 3)
                    out = relay.feed(chunk)
                    if not out:
                        continue
                    if recorder is not None:
                        recorder.feed(out)
                    if not state["shown"] and not relay.content_events:
                        if relay.upstream_error:
                            return self._stream_failed(call, attempt, relay, prompt, relay.upstream_error)
                        if held_size + len(out) < HOLD_BYTES:
                            held.append(out)
                            held_size += len(out)
                            continue
                    await show(out)
                tail = relay.finish()
                if relay.upstream_error:  # already relayed to the client in its own format
                    if not state["shown"] and not relay.content_events:
                        return self._stream_failed(call, attempt, relay, prompt, relay.upstream_error)
                    attempt.status, attempt.error_type = "error", relay.upstream_error
                elif not relay.complete:
                    raise aiohttp.ClientPayloadError("stream ended early")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                if relay.complete:  # the answer was whole; only the upstream's end of body went missing
                    tail = relay.finish()
                elif not state["shown"]:
                    return self._stream_failed(call, attempt, relay, prompt, "stream_cut")
                else:
                    attempt.status, attempt.error_type, attempt.http_status = "error", "stream_cut", 502
                    tail = relay.error_event("The upstream provider's stream broke off before it finished.")
            except Exception as exc:  # noqa: BLE001 - an unreadable chunk must still end cleanly and be metered
                log.warning("unusable upstream stream from %s for request %s: %s", dep.name, call.request_id, type(exc).__name__)
                attempt.status, attempt.error_type, attempt.http_status = "error", "relay_error", 502
                tail = relay.error_event("spendgate could not read the upstream provider's stream.")
            state["done"] = True
            event = self._finish_stream(call, attempt, relay, prompt)
            if recorder is not None:
                recorder.feed(tail)
                recorder.done(event)
            cost = b": x-spendgate-cost " + money(call.cost) + b"\n\n"
            await show(tail + cost, more=False)
            first_byte = attempt.ttft_ms / 1000 if attempt.ttft_ms is not None else None
            broke = SERVER_ERROR if attempt.status == "error" else None  # cut after the first byte: the deployment's fault
            return Success(sent=True, event=event, first_byte_s=first_byte, failure=broke)
        except asyncio.CancelledError:
            if not attempt.recorded:
                attempt.status = "client_disconnect" if state["disconnected"] else "error"
                attempt.error_type = None if state["disconnected"] else "cancelled"
                self._finish_stream(call, attempt, relay, prompt)
            if not state["disconnected"]:
                raise
            task.uncancel()  # the disconnect is handled; nothing else asked to cancel
            return Success(sent=True, failure=CANCELLED)  # the client left: nothing learned of the deployment
        finally:
            state["done"] = True
            watcher.cancel()
            if not relay.complete:
                resp.close()  # stop the upstream generating tokens nobody reads

    def _stream_failed(self, call: Call, attempt: Attempt, relay: Any, prompt: str, error_type: str) -> Failure:
        """The stream failed before the client saw a byte: record it; the loop may
        fail over, and if it cannot, the client gets a plain HTTP error."""
        status, kind, failure = _STREAM_ERRORS.get(error_type, (502, "upstream", "stream"))
        attempt.status, attempt.error_type, attempt.http_status = "error", error_type, status
        self._finish_stream(call, attempt, relay, prompt, before_content=True)
        err = GatewayError(status, f"The upstream provider's stream failed before it started ({error_type}).", kind)
        return Failure(status, render(err, call.wire), failure)

    def _finish_stream(self, call: Call, attempt: Attempt, relay: Any, prompt: str, before_content: bool = False) -> UsageEvent:
        attempt.ts_end = time.time()
        attempt.finish_reason = relay.finish_reason
        attempt.model_used = relay.model_used
        attempt.usage = relay.usage
        if before_content and not relay.usage_known:
            attempt.usage_source = "none"  # failed before any content: nothing was generated
        elif not relay.usage_known:
            attempt.usage_source = "estimated"
            attempt.usage = TokenUsage(
                input_tokens=relay.usage.input_tokens or estimate_tokens(prompt),
                output_tokens=max(relay.usage.output_tokens, relay.content_events),
                cache_read_tokens=relay.usage.cache_read_tokens,
                cache_write_tokens=relay.usage.cache_write_tokens,
                cache_write_1h_tokens=relay.usage.cache_write_1h_tokens,
            )
        if relay.text is not None:
            attempt.response_text = "".join(relay.text)
        return self.record(call, attempt, prompt)

    def record(self, call: Call, attempt: Attempt, prompt: str) -> UsageEvent:
        if not attempt.ts_end:
            attempt.ts_end = time.time()
        attempt.recorded = True
        event = self.meter.event(call, attempt, prompt if self.privacy.store_text else None)
        call.cost += event.cost
        call.input_tokens += event.input_tokens
        call.output_tokens += event.output_tokens
        self.submit(event)
        return event

    def _record_cancelled(self, call: Call, attempt: Attempt, prompt: str) -> None:
        """The server cancelled the call (shutdown past its grace period): still a ledger row."""
        attempt.status, attempt.error_type, attempt.usage_source = "error", "cancelled", "none"
        self.record(call, attempt, prompt)


def id_headers(call: Call) -> list[tuple[bytes, bytes]]:
    return [(b"x-spendgate-request-id", call.request_id.encode()), *call.response_headers]


def _upstream_endpoint(call: Call, dep: Deployment) -> str:
    if call.wire == dep.wire:
        return call.endpoint
    return "messages" if dep.wire == "anthropic" else "chat.completions"


def money(amount: Decimal) -> bytes:
    """Plain decimal notation (never `1E-7`) for headers."""
    return format(amount, "f").encode()


def _read_failure(exc: BaseException, dep: Deployment) -> GatewayError:
    if isinstance(exc, asyncio.TimeoutError):
        return GatewayError(504, f"The upstream provider did not answer within {dep.timeout_s:g} s.", "timeout")
    return GatewayError(502, f"The upstream connection failed: {type(exc).__name__}.", "upstream")
