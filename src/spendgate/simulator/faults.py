"""Fault injection: which fault a request gets, and what each looks like on the wire.

429/500/529 are answered with each API's real error body and headers; `timeout`
holds the request without a byte; `reset` drops the connection; `cut` (streams)
sends part of the stream and drops it — see `streaming.send_stream`.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone

from aiohttp import web

from spendgate.simulator.directives import Controls
from spendgate.simulator.errors import Flavor, anthropic_error, azure_error, openai_error
from spendgate.simulator.settings import SimulatorSettings
from spendgate.simulator.streaming import abort

RETRY_AFTER_S = 1


class Faults:
    """Picks faults (directive, header, or random at `fault_rate`) and produces them."""

    def __init__(self, settings: SimulatorSettings, closing: asyncio.Event) -> None:
        self.settings = settings
        self.closing = closing
        self._rng = random.Random(settings.seed)

    def pick(self, controls: Controls) -> str | None:
        if controls.fault is not None:
            return controls.fault
        s = self.settings
        if s.fault_rate > 0 and s.fault_kinds and self._rng.random() < s.fault_rate:
            return self._rng.choice(s.fault_kinds)
        return None

    async def wait_first_byte(self, controls: Controls) -> None:
        latency = controls.latency_ms if controls.latency_ms is not None else self.settings.latency_ms
        if latency > 0:
            await asyncio.sleep(latency / 1000)

    async def produce(self, kind: str, request: web.Request, flavor: Flavor, model: str, stream: bool) -> web.StreamResponse | None:
        """The response for fault `kind`, or None when the stream itself must be cut."""
        if kind == "cut" and stream:
            return None
        if kind in ("reset", "cut"):
            abort(request)
            return web.Response(status=500)  # never sent: the transport is gone
        if kind == "timeout":
            try:
                await asyncio.wait_for(self.closing.wait(), self.settings.hang_s)
            except asyncio.TimeoutError:
                pass
            abort(request)
            return web.Response(status=504)
        return status_fault(kind, flavor, model)


def status_fault(kind: str, flavor: Flavor, model: str) -> web.Response:
    if flavor == "anthropic":
        return _anthropic(kind)
    if flavor == "azure":
        return _azure(kind, model)
    return _openai(kind, model)


def _openai(kind: str, model: str) -> web.Response:
    if kind == "429":
        return openai_error(
            429,
            f"Rate limit reached for {model} in organization org-spendgatesim on requests per min (RPM): "
            f"Limit 10000, Used 10000, Requested 1. Please try again in {RETRY_AFTER_S}s. "
            "Visit https://platform.openai.com/account/rate-limits to learn more.",
            type_="requests",
            code="rate_limit_exceeded",
            headers={
                "retry-after": str(RETRY_AFTER_S),
                "x-ratelimit-limit-requests": "10000",
                "x-ratelimit-limit-tokens": "30000000",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-remaining-tokens": "29999000",
                "x-ratelimit-reset-requests": f"{RETRY_AFTER_S}s",
                "x-ratelimit-reset-tokens": "2ms",
            },
        )
    if kind == "529":
        return openai_error(503, "The server is overloaded or not ready yet.", type_="server_error")
    return openai_error(500, "The server had an error while processing your request. Sorry about that!", type_="server_error")


def _azure(kind: str, model: str) -> web.Response:
    if kind == "429":
        return azure_error(
            429,
            "429",
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API have exceeded call rate "
            f"limit of your current OpenAI S0 pricing tier. Please retry after {RETRY_AFTER_S} second.",
            headers={
                "retry-after": str(RETRY_AFTER_S),
                "retry-after-ms": str(RETRY_AFTER_S * 1000),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-remaining-tokens": "0",
            },
        )
    return _openai(kind, model)


def _anthropic(kind: str) -> web.Response:
    if kind == "429":
        reset = (datetime.now(timezone.utc) + timedelta(seconds=RETRY_AFTER_S)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return anthropic_error(
            429,
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests per minute. "
            "For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response "
            "headers for current usage. Please reduce the prompt length or the maximum tokens requested, "
            "or try again later.",
            headers={
                "retry-after": str(RETRY_AFTER_S),
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": reset,
            },
        )
    if kind == "529":
        return anthropic_error(529, "overloaded_error", "Overloaded")
    return anthropic_error(500, "api_error", "Internal server error")
