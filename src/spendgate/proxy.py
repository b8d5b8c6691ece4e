"""One LLM call end to end: stages, route, attempts (retry/failover), relay, meter, ledger."""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Any

import aiohttp

from spendgate.asgi import SSE_HEADERS, Receive, Send, send_json, start_response
from spendgate.cache.serve import MissRecorder, serve_hit
from spendgate.cache.stage import CacheStage
from spendgate.config import Config, Deployment, PrivacyConfig
from spendgate.errors import GatewayError
from spendgate.fingerprint import prefix_hashes, request_hash
from spendgate.ledger.events import UsageEvent
from spendgate.meter import Attempt, Meter
from spendgate.pipeline import Call, Stage, run_stages
from spendgate.pricing.catalog import TokenUsage
from spendgate.providers.adapters import Adapter
from spendgate.providers.upstream import UpstreamClient
from spendgate.relay.complete import BadUpstreamBody, estimate_tokens, read_completion
from spendgate.relay.errors import RETRYABLE, relay_error, render
from spendgate.relay.prepare import upstream_body
from spendgate.relay.stream import make_relay
from spendgate.routing.router import Router
from spendgate.wire import anthropic as anthropic_wire
from spendgate.wire import openai as openai_wire

log = logging.getLogger("spendgate.proxy")



class EventSink:
    """Where finished events go (the ledger writer); `submit` never blocks."""

    def submit(self, event: UsageEvent) -> None: ...


class Proxy:
    def __init__(
        self,
        config: Config,
        stages: list[Stage],
        router: Router,
        adapters: dict[str, Adapter],
        upstream: UpstreamClient,
        meter: Meter,
        sink: EventSink,
        cache: CacheStage | None = None,
    ) -> None:
        self.stages = stages
        self.cache = cache
        self.router = router
        self.adapters = adapters
        self.upstream = upstream
        self.meter = meter
        self.sink = sink
        self.privacy: PrivacyConfig = config.privacy

    async def handle(self, call: Call, send: Send, receive: Receive) -> None:
        try:
            await self._handle(call, send, receive)
        finally:
            await call.finish()  # settle reservations, free slots: on every path

    async def _handle(self, call: Call, send: Send, receive: Receive) -> None:
        try:
            await run_stages(self.stages, call)
            if call.cache_hit is not None:
                call.request_hash = request_hash(call.body)
                await serve_hit(call, send, self._id_headers(call), self.sink.submit)
                return
            candidates = call.candidates or self.router.candidates(call.model, call.endpoint)
        except GatewayError as err:
            await self._refuse(send, err, call)
            return
        prompt = _prompt_text(call)
        call.request_hash = request_hash(call.body)
        call.prefix_hashes = prefix_hashes(prompt, self.privacy.prefix_block_chars)
        number = 0
        final: tuple[int, bytes, list[tuple[bytes, bytes]]] | None = None
        for dep in candidates:
            for retry in range(dep.retries + 1):
                number += 1
                reason = call.route_reason if number == 1 else ("retry" if retry else "failover")
                attempt = Attempt(dep, number, route_reason=reason)
                outcome = await self._attempt(call, attempt, prompt, send, receive)
                if outcome is None:
                    return  # answered the client
                final, wait = outcome
                if wait is None or retry == dep.retries:
                    break  # not retryable here, or retries spent: fail over at once
                await asyncio.sleep(min(wait, dep.retry_max_wait_s))
            if final is not None and not _retryable(final[0]):
                break
        assert final is not None
        status, body, headers = final
        await send_json(send, status, body, [*headers, *self._id_headers(call)])

    async def _attempt(
        self, call: Call, attempt: Attempt, prompt: str, send: Send, receive: Receive
    ) -> tuple[tuple[int, bytes, list[tuple[bytes, bytes]]], float | None] | None:
        """Run one upstream attempt. None when the client got its answer; else the
        failure to answer with if no later attempt succeeds, and the wait before
        retrying (None: don't retry)."""
        dep = attempt.deployment
        try:
            body = upstream_body(call, dep)
        except GatewayError as err:
            return (err.status, render(err, call.wire), []), None
        adapter = self.adapters[dep.name]
        try:
            target = adapter.target(_upstream_endpoint(call, dep), call.headers)
            resp = await self.upstream.post(target, body, dep.timeout_s, dep.connect_timeout_s, stream=call.stream)
        except asyncio.CancelledError:
            self._record_cancelled(call, attempt, prompt)
            raise
        except GatewayError as err:
            attempt.status, attempt.http_status, attempt.error_type = "error", err.status, err.kind
            attempt.usage_source = "none"
            self._record(call, attempt, prompt)
            return (err.status, render(err, call.wire), []), _backoff(attempt.number, None)
        try:
            if resp.status != 200:
                return await self._upstream_error(call, attempt, resp, prompt)
            if call.stream:
                await self._stream(call, attempt, resp, prompt, send, receive)
                return None
            raw = await resp.read()
        except asyncio.CancelledError:
            if not attempt.recorded:
                self._record_cancelled(call, attempt, prompt)
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            err = _read_failure(exc, dep)
            attempt.status, attempt.http_status, attempt.error_type = "error", err.status, err.kind
            attempt.usage_source = "none"
            self._record(call, attempt, prompt)
            return (err.status, render(err, call.wire), []), _backoff(attempt.number, None)
        finally:
            resp.release()
        attempt.http_status = 200
        try:
            out = read_completion(raw, dep.wire, call.wire, attempt, self.privacy.store_text, prompt)
        except Exception as exc:  # noqa: BLE001 - a billed call must reach the ledger whatever the body
            log.warning("unusable upstream response from %s for request %s: %s", dep.name, call.request_id, type(exc).__name__)
            attempt.status, attempt.http_status = "error", 502
            attempt.error_type = "bad_upstream_body" if isinstance(exc, BadUpstreamBody) else "relay_error"
            if not (attempt.usage.input_tokens or attempt.usage.output_tokens):
                attempt.usage_source = "none"
            self._record(call, attempt, prompt)
            err = GatewayError(502, "The upstream provider answered with a response spendgate could not read.", "upstream")
            return (502, render(err, call.wire), []), None
        event = self._record(call, attempt, prompt)
        if call.cache_plan is not None and self.cache is not None:
            MissRecorder(self.cache, call).done(event, out)
        await send_json(send, 200, out, [*self._id_headers(call), (b"x-spendgate-cost", money(event.cost))])
        return None

    async def _upstream_error(
        self, call: Call, attempt: Attempt, resp: aiohttp.ClientResponse, prompt: str
    ) -> tuple[tuple[int, bytes, list[tuple[bytes, bytes]]], float | None]:
        raw = await resp.read()
        out, etype = relay_error(resp.status, raw, attempt.deployment.wire, call.wire)
        attempt.status, attempt.http_status, attempt.error_type = "error", resp.status, etype
        if resp.status in (401, 403):
            # The provider refused *spendgate's* credentials: the client's key is
            # fine, and the provider's message may quote part of our secret.
            log.error("deployment %s: upstream refused its credentials (HTTP %d)", attempt.deployment.name, resp.status)
            attempt.error_type = "upstream_auth"
            err = GatewayError(502, f"The upstream provider refused the gateway's credentials for deployment '{attempt.deployment.name}'.", "upstream")
            self._record(call, attempt, prompt)
            return (502, render(err, call.wire), []), None
        attempt.usage_source = "none"
        self._record(call, attempt, prompt)
        headers: list[tuple[bytes, bytes]] = []
        retry_after = resp.headers.get("retry-after")
        if retry_after:
            headers.append((b"retry-after", retry_after.encode()))
        wait = _backoff(attempt.number, retry_after) if _retryable(resp.status) else None
        if retry_after and wait is not None and wait > attempt.deployment.retry_max_wait_s:
            wait = None  # the provider asks for a longer pause than we may hold the call: fail over
        return (resp.status, out, headers), wait

    async def _stream(
        self, call: Call, attempt: Attempt, resp: aiohttp.ClientResponse, prompt: str, send: Send, receive: Receive
    ) -> None:
        dep = attempt.deployment
        relay = make_relay(call.wire, dep.wire, call.model, call.client_wants_usage, self.privacy.store_text)
        recorder = MissRecorder(self.cache, call) if call.cache_plan is not None and self.cache is not None else None
        attempt.http_status = 200
        state = {"done": False, "disconnected": False}
        task = asyncio.current_task()
        assert task is not None

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not state["done"]:
                        state["disconnected"] = True
                        task.cancel()
                    return

        watcher = asyncio.ensure_future(watch_disconnect())
        try:
            await start_response(send, 200, [*SSE_HEADERS, *self._id_headers(call)])
            try:
                async for chunk in resp.content.iter_any():
                    if attempt.ttft_ms is None:
                        attempt.ttft_ms = round((time.time() - attempt.ts_start) * 1000, 3)
                    out = relay.feed(chunk)
                    if out:
                        if recorder is not None:
                            recorder.feed(out)
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                tail = relay.finish()
                if relay.upstream_error:  # already relayed to the client in its own format
                    attempt.status, attempt.error_type = "error", relay.upstream_error
                elif not relay.complete:
                    raise aiohttp.ClientPayloadError("stream ended early")
            except (aiohttp.ClientError, asyncio.TimeoutError):
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
            cost = b": x-spendgate-cost " + money(event.cost) + b"\n\n"
            await send({"type": "http.response.body", "body": tail + cost, "more_body": False})
        except asyncio.CancelledError:
            if not attempt.recorded:
                attempt.status = "client_disconnect" if state["disconnected"] else "error"
                attempt.error_type = None if state["disconnected"] else "cancelled"
                self._finish_stream(call, attempt, relay, prompt)
            if not state["disconnected"]:
                raise
            task.uncancel()  # the disconnect is handled; nothing else asked to cancel
        finally:
            state["done"] = True
            watcher.cancel()
            if not relay.complete:
                resp.close()  # stop the upstream generating tokens nobody reads

    def _finish_stream(self, call: Call, attempt: Attempt, relay: Any, prompt: str) -> UsageEvent:
        attempt.ts_end = time.time()
        attempt.finish_reason = relay.finish_reason
        attempt.model_used = relay.model_used
        attempt.usage = relay.usage
        if not relay.usage_known:
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
        return self._record(call, attempt, prompt)

    def _record(self, call: Call, attempt: Attempt, prompt: str) -> UsageEvent:
        if not attempt.ts_end:
            attempt.ts_end = time.time()
        attempt.recorded = True
        event = self.meter.event(call, attempt, prompt if self.privacy.store_text else None)
        call.cost += event.cost
        call.input_tokens += event.input_tokens
        call.output_tokens += event.output_tokens
        self.sink.submit(event)
        return event

    def _record_cancelled(self, call: Call, attempt: Attempt, prompt: str) -> None:
        """The server cancelled the call (shutdown past its grace period): still a ledger row."""
        attempt.status, attempt.error_type, attempt.usage_source = "error", "cancelled", "none"
        self._record(call, attempt, prompt)

    def _id_headers(self, call: Call) -> list[tuple[bytes, bytes]]:
        return [(b"x-spendgate-request-id", call.request_id.encode()), *call.response_headers]

    async def _refuse(self, send: Send, err: GatewayError, call: Call) -> None:
        await send_json(send, err.status, render(err, call.wire), self._id_headers(call))


def _upstream_endpoint(call: Call, dep: Deployment) -> str:
    if call.wire == dep.wire:
        return call.endpoint
    return "messages" if dep.wire == "anthropic" else "chat.completions"


def _prompt_text(call: Call) -> str:
    return (anthropic_wire if call.wire == "anthropic" else openai_wire).prompt_text(call.body)


def money(amount: Decimal) -> bytes:
    """Plain decimal notation (never `1E-7`) for headers."""
    return format(amount, "f").encode()


def _retryable(status: int) -> bool:
    return status in RETRYABLE


def _backoff(number: int, retry_after: str | None) -> float:
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass
    return min(0.25 * 2 ** (number - 1), 8.0)


def _read_failure(exc: BaseException, dep: Deployment) -> GatewayError:
    if isinstance(exc, asyncio.TimeoutError):
        return GatewayError(504, f"The upstream provider did not answer within {dep.timeout_s:g} s.", "timeout")
    return GatewayError(502, f"The upstream connection failed: {type(exc).__name__}.", "upstream")
