"""Fault injection: which fault a request gets, and what each looks like on the wire.

429/500/503/529 and context_length are answered with each API's real error body
and headers; `timeout` holds the request without a byte; `reset` drops the
connection; `cut` (streams) sends part of the stream and drops it — see
`streaming.send_stream`; `stream_error` answers 200 and an SSE error event
before any content.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import orjson
from aiohttp import web

from spendgate.simulator.directives import Controls
from spendgate.simulator.errors import Flavor, anthropic_error, azure_error, openai_error
from spendgate.simulator.ids import request_id
from spendgate.simulator.settings import SimulatorSettings
from spendgate.simulator.streaming import abort

RETRY_AFTER_S = 1
MAX_FAULT_KEYS = 100_000  # `fault_times` counters kept (least recently used dropped first)
OPENAI_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


@dataclass(slots=True)
class Ask:
    """The size of a request, for the context-window check and its error message."""

    endpoint: str  # "chat" | "completions" | "embeddings" | "messages"
    prompt_tokens: int  # the whole prompt (embeddings: the longest input)
    completion_tokens: int = 0  # legacy completions: the max_tokens asked for


def default_context_window(model: str, endpoint: str) -> int:
    """A plausible context window, named in a forced `context_length` fault's message."""
    if endpoint == "embeddings":
        return 8192
    if model.startswith("claude"):
        return 200_000
    if model.startswith("gpt-3.5-turbo-instruct"):
        return 4096
    if model.startswith("gpt-4.1"):
        return 1_047_576
    if model.startswith("gpt-5"):
        return 400_000
    if model.startswith(("o1", "o3", "o4")):
        return 200_000
    if model.startswith("gemini"):
        return 1_048_576
    return 128_000


class Faults:
    """Picks faults (context window, directive, header, or random at `fault_rate`) and produces them."""

    def __init__(self, settings: SimulatorSettings, closing: asyncio.Event) -> None:
        self.settings = settings
        self.closing = closing
        self._rng = random.Random(settings.seed)
        self._served: OrderedDict[bytes, int] = OrderedDict()  # fault_key -> faults produced so far

    def pick(self, controls: Controls, ask: Ask | None = None) -> str | None:
        if controls.context_window is not None and ask is not None and ask.prompt_tokens > controls.context_window:
            return "context_length"
        if controls.fault is not None:
            if controls.fault_times is not None and not self._still_failing(controls.fault_key, controls.fault_times):
                return None
            return controls.fault
        s = self.settings
        if s.fault_rate > 0 and s.fault_kinds and self._rng.random() < s.fault_rate:
            return self._rng.choice(s.fault_kinds)
        return None

    def _still_failing(self, key: bytes, times: int) -> bool:
        """Counts one more request of `key`; True for the first `times` of them."""
        served = self._served
        n = served.get(key, 0)
        if n >= times:
            if key in served:
                served.move_to_end(key)
            return False
        served[key] = n + 1
        served.move_to_end(key)
        while len(served) > MAX_FAULT_KEYS:
            served.popitem(last=False)
        return True

    async def wait_first_byte(self, controls: Controls) -> None:
        latency = controls.latency_ms if controls.latency_ms is not None else self.settings.latency_ms
        if latency > 0:
            await asyncio.sleep(latency / 1000)

    async def produce(
        self,
        kind: str,
        request: web.Request,
        flavor: Flavor,
        model: str,
        stream: bool,
        controls: Controls | None = None,
        ask: Ask | None = None,
        sse_headers: dict[str, str] | None = None,
    ) -> web.StreamResponse | None:
        """The response for fault `kind`, or None when the stream itself must be cut."""
        if kind == "cut" and stream:
            return None
        if kind == "stream_error" and stream:
            return await send_stream_error(request, flavor, sse_headers or {})
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
        c = controls or Controls()
        if kind == "context_length":
            ask = ask or Ask("chat", 0)
            window = c.context_window if c.context_window is not None else default_context_window(model, ask.endpoint)
            return context_length_error(flavor, ask, window)
        return status_fault(kind, flavor, model, c.retry_after)


# ---- status faults -----------------------------------------------------------------


def _seconds(x: float) -> str:
    """A Retry-After value: whole seconds as an integer, fractions as a decimal."""
    if x == int(x):
        return str(int(x))
    return f"{x:.3f}".rstrip("0").rstrip(".") or "0"


def _duration(x: float) -> str:
    """OpenAI's reset style: `1s`, `1.5s`, `250ms`."""
    if x >= 1 or x == 0:
        return f"{_seconds(x)}s"
    return f"{max(1, round(x * 1000))}ms"


def status_fault(kind: str, flavor: Flavor, model: str, retry_after: float | None = None) -> web.Response:
    if flavor == "anthropic":
        return _anthropic(kind, retry_after)
    if flavor == "azure":
        return _azure(kind, model, retry_after)
    return _openai(kind, model, retry_after)


def _openai(kind: str, model: str, retry_after: float | None) -> web.Response:
    extra = {"retry-after": _seconds(retry_after)} if retry_after is not None else None
    if kind == "429":
        wait = RETRY_AFTER_S if retry_after is None else retry_after
        return openai_error(
            429,
            f"Rate limit reached for {model} in organization org-spendgatesim on requests per min (RPM): "
            f"Limit 10000, Used 10000, Requested 1. Please try again in {_duration(wait)}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more.",
            type_="requests",
            code="rate_limit_exceeded",
            headers={
                "retry-after": _seconds(wait),
                "x-ratelimit-limit-requests": "10000",
                "x-ratelimit-limit-tokens": "30000000",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-remaining-tokens": "29999000",
                "x-ratelimit-reset-requests": _duration(wait),
                "x-ratelimit-reset-tokens": "2ms",
            },
        )
    if kind == "529":
        return openai_error(503, "The server is overloaded or not ready yet.", type_="server_error", headers=extra)
    if kind == "503":
        rid = request_id()
        return openai_error(
            503,
            "That model is currently overloaded with other requests. You can retry your request, or contact us through "
            f"our help center at help.openai.com if the error persists. (Please include the request ID {rid} in your message.)",
            type_="server_error",
            headers=extra,
            rid=rid,
        )
    return openai_error(500, OPENAI_SERVER_ERROR, type_="server_error")


def _azure(kind: str, model: str, retry_after: float | None) -> web.Response:
    if kind == "429":
        wait = RETRY_AFTER_S if retry_after is None else retry_after
        whole = math.ceil(wait)
        return azure_error(
            429,
            "429",
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API have exceeded call rate "
            f"limit of your current OpenAI S0 pricing tier. Please retry after {whole} second{'' if whole == 1 else 's'}.",
            headers={
                "retry-after": _seconds(wait),
                "retry-after-ms": str(round(wait * 1000)),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-remaining-tokens": "0",
            },
        )
    return _openai(kind, model, retry_after)


def _anthropic(kind: str, retry_after: float | None) -> web.Response:
    if kind == "429":
        wait = RETRY_AFTER_S if retry_after is None else retry_after
        reset = (datetime.now(timezone.utc) + timedelta(seconds=wait)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return anthropic_error(
            429,
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests per minute. "
            "For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response "
            "headers for current usage. Please reduce the prompt length or the maximum tokens requested, "
            "or try again later.",
            headers={
                "retry-after": _seconds(wait),
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": reset,
            },
        )
    if kind in ("529", "503", "stream_error"):  # Anthropic has no 503: overload is its 529
        extra = {"retry-after": _seconds(retry_after)} if retry_after is not None else None
        return anthropic_error(529, "overloaded_error", "Overloaded", headers=extra)
    return anthropic_error(500, "api_error", "Internal server error")


# ---- the context window -------------------------------------------------------------


def context_length_error(flavor: Flavor, ask: Ask, window: int) -> web.Response:
    """The 400 each API sends for a prompt longer than the model's context window."""
    n = ask.prompt_tokens if ask.prompt_tokens > window else window + max(1, ask.prompt_tokens)
    if flavor == "anthropic":
        return anthropic_error(400, "invalid_request_error", f"prompt is too long: {n} tokens > {window} maximum")
    if ask.endpoint == "chat":
        return openai_error(
            400,
            f"This model's maximum context length is {window} tokens. However, your messages resulted in {n} tokens. "
            "Please reduce the length of the messages.",
            param="messages",
            code="context_length_exceeded",
        )
    asked = n + ask.completion_tokens
    return openai_error(
        400,
        f"This model's maximum context length is {window} tokens, however you requested {asked} tokens "
        f"({n} in your prompt; {ask.completion_tokens} for the completion). Please reduce your prompt; or completion length.",
    )


# ---- an error inside a 200 stream ---------------------------------------------------


async def send_stream_error(request: web.Request, flavor: Flavor, headers: dict[str, str]) -> web.StreamResponse:
    """HTTP 200, then the API's in-stream error event before any content, then the end of the body.

    Anthropic: `event: error` with `overloaded_error` (what its 529 is mid-stream);
    OpenAI and Azure: one `data: {"error": {...}}` chunk and no `[DONE]`.
    """
    if flavor == "anthropic":
        payload = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        frame = b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
    else:
        payload = {"error": {"message": OPENAI_SERVER_ERROR, "type": "server_error", "param": None, "code": None}}
        frame = b"data: " + orjson.dumps(payload) + b"\n\n"
    resp = web.StreamResponse(status=200, headers=headers)
    try:
        await resp.prepare(request)
        await resp.write(frame)
        await resp.write_eof()
    except ConnectionError:
        pass
    return resp
