"""`spendgate.instrument()`: the real SDK clients against a local fake provider.

The fake (an aiohttp app on 127.0.0.1, in a thread) answers like OpenAI and
Anthropic do, JSON and SSE, and records every request it receives so tests
can check what reached the "provider".
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web

import spendgate
from spendgate.fingerprint import request_hash
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.open import open_ledger
from spendgate.sdk.instrument import detect_provider
from spendgate.sdk.sinks import GatewaySink, LedgerSink, MemorySink

D = Decimal
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")

# usage the fake reports, and the costs it implies (hand-computed from list prices per MTok)
OPENAI_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 200},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
GPT_4O_COST = D("0.00575")  # 1000*2.5 + 200*1.25 + 300*10
GPT_4O_MINI_COST = D("0.000345")  # 1000*0.15 + 200*0.075 + 300*0.6
ANTHROPIC_USAGE = {"input_tokens": 100, "output_tokens": 250, "cache_creation_input_tokens": 400, "cache_read_input_tokens": 2000}
SONNET_COST = D("0.00615")  # 100*3 + 2000*0.3 + 400*3.75 + 250*15
HAIKU_COST = D("0.00205")  # 100*1 + 2000*0.1 + 400*1.25 + 250*5
PIECES = ["Hel", "lo", ", ", "wor", "ld"]


# --- the fake provider ------------------------------------------------------------


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data) if not isinstance(data, str) else data}\n\n".encode()


def _openai_error(status: int) -> web.Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return web.json_response({"error": {"message": f"fake {status}", "type": kind, "param": None, "code": None}}, status=status)


class LocalServer:
    """An aiohttp app on 127.0.0.1 (port 0) in its own thread, so sync SDK clients can call it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def start(self) -> "LocalServer":
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        self.routes(app)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())


class FakeProvider(LocalServer):
    """OpenAI- and Anthropic-shaped answers. Model names steer it:
    `error-500`/`error-400` fail; `no-usage` never reports usage; `slow` streams 200 pieces.
    """

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.chat)  # Azure
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/messages", self.messages)

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers), "body": body})
        return body

    # OpenAI
    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model = body["model"]
        if model.startswith("error-"):
            return _openai_error(int(model.split("-")[1]))
        azure_deployment = request.match_info.get("deployment")  # Azure answers with the model it runs
        used = "gpt-4o-2024-08-06" if model == "gpt-4o" or azure_deployment else model
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": used,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "".join(PIECES)}, "finish_reason": "stop", "logprobs": None}
                    ],
                    "usage": None if model == "no-usage" else OPENAI_USAGE,
                    "system_fingerprint": "fp_fake",
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage")) and model != "no-usage"

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            c: dict[str, Any] = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": used,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                c["usage"] = None
            return c

        pieces = PIECES * 40 if model == "slow" else PIECES
        chunks = [chunk({"role": "assistant", "content": ""}, None)]
        chunks += [chunk({"content": p}, None) for p in pieces]
        chunks.append(chunk({}, "stop"))
        if include_usage:
            chunks.append({**chunk({}, None), "choices": [], "usage": OPENAI_USAGE})
        return await self._stream(request, [_sse(c) for c in chunks] + [_sse("[DONE]")], slow=model == "slow")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model = body["model"]
        base = {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": model}
        if not body.get("stream"):
            return web.json_response(
                {**base, "choices": [{"index": 0, "text": "Hello", "finish_reason": "length", "logprobs": None}], "usage": OPENAI_USAGE}
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if include_usage else {}
        events = [_sse({**base, **extra, "choices": [{"index": 0, "text": p, "finish_reason": None, "logprobs": None}]}) for p in PIECES]
        events.append(_sse({**base, **extra, "choices": [{"index": 0, "text": "", "finish_reason": "length", "logprobs": None}]}))
        if include_usage:
            events.append(_sse({**base, "choices": [], "usage": OPENAI_USAGE}))
        return await self._stream(request, events + [_sse("[DONE]")])

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        return web.json_response(
            {
                "object": "list",
                "model": body["model"],
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "usage": {"prompt_tokens": 1000, "total_tokens": 1000},
            }
        )

    # Anthropic
    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model = body["model"]
        if model.startswith("error-"):
            status = int(model.split("-")[1])
            kind = "api_error" if status >= 500 else "invalid_request_error"
            return web.json_response({"type": "error", "error": {"type": kind, "message": f"fake {status}"}}, status=status)
        used = f"{model}-20250929" if model == "claude-sonnet-4-5" else model
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": used,
            "content": [{"type": "text", "text": "".join(PIECES)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": ANTHROPIC_USAGE,
        }
        if not body.get("stream"):
            return web.json_response(message)
        start_usage = {**ANTHROPIC_USAGE, "output_tokens": 1}
        pieces = PIECES * 40 if model == "slow" else PIECES
        events = [
            _sse({"type": "message_start", "message": {**message, "content": [], "stop_reason": None, "usage": start_usage}}, "message_start"),
            _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, "content_block_start"),
            _sse({"type": "ping"}, "ping"),
        ]
        events += [
            _sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}, "content_block_delta")
            for p in pieces
        ]
        events += [
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _sse(
                {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 250}},
                "message_delta",
            ),
            _sse({"type": "message_stop"}, "message_stop"),
        ]
        return await self._stream(request, events, slow=model == "slow")

    async def _stream(self, request: web.Request, events: list[bytes], slow: bool = False) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for ev in events:
                await resp.write(ev)
                if slow:
                    await asyncio.sleep(0.005)
        except (ConnectionResetError, asyncio.CancelledError):
            return resp
        await resp.write_eof()
        return resp


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as server:
        yield server


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


def openai_client(fake: FakeProvider, sink: MemorySink | None = None, cls: type = openai.OpenAI, **kw: Any) -> Any:
    client = cls(api_key="sk-test", base_url=fake.url + "/v1", max_retries=0)
    return spendgate.instrument(client, sink=sink, **kw) if sink is not None else client


def anthropic_client(fake: FakeProvider, sink: MemorySink, cls: type = anthropic.Anthropic, **kw: Any) -> Any:
    client = cls(api_key="sk-ant-test", base_url=fake.url, max_retries=0)
    return spendgate.instrument(client, sink=sink, **kw)


MSG = [{"role": "user", "content": "Say hello"}]
AMSG = dict(max_tokens=300, messages=MSG)


def only(sink: MemorySink) -> UsageEvent:
    assert len(sink.events) == 1, sink.events
    return sink.events[0]


# --- OpenAI, sync ----------------------------------------------------------------------


def test_openai_chat_non_stream(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink, tags={"team": "search"})
    resp = client.chat.completions.create(model="gpt-4o", messages=MSG)
    assert resp.choices[0].message.content == "Hello, world"
    ev = only(sink)
    assert (ev.source, ev.endpoint, ev.wire_format, ev.provider) == ("sdk", "chat.completions", "openai", "openai_compatible")
    assert (ev.model_requested, ev.model_used, ev.streamed, ev.status, ev.http_status) == (
        "gpt-4o",
        "gpt-4o-2024-08-06",
        False,
        "ok",
        200,
    )
    assert (ev.input_tokens, ev.output_tokens, ev.cache_read_tokens, ev.usage_source) == (1200, 300, 200, "provider")
    assert (ev.cost, ev.list_cost, ev.price_status) == (GPT_4O_COST, GPT_4O_COST, "priced")
    assert ev.price_source == "genai-prices:openai/gpt-4o"
    assert ev.finish_reason == "stop" and ev.team == "search"
    assert ev.latency_ms is not None and ev.latency_ms >= 0 and ev.ttft_ms is None
    assert ev.ts_start <= ev.ts_end
    assert ev.request_text is None and ev.response_text is None  # never store text
    assert ev.request_hash == request_hash({"model": "gpt-4o", "messages": MSG})
    assert ev.request_id and ev.request_id != ev.event_id


def test_openai_chat_stream_strips_the_injected_usage_chunk(fake: FakeProvider, sink: MemorySink) -> None:
    plain = openai_client(fake)  # what the app would see without spendgate
    expected = [c.model_dump(exclude_unset=True) for c in plain.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)]
    client = openai_client(fake, sink)
    got = [c.model_dump(exclude_unset=True) for c in client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)]
    assert got == expected
    assert all(c["choices"] for c in got)  # no usage-only chunk reached the caller
    assert fake.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    ev = only(sink)
    assert (ev.streamed, ev.status, ev.usage_source, ev.finish_reason) == (True, "ok", "provider", "stop")
    assert (ev.input_tokens, ev.output_tokens, ev.cost) == (1200, 300, GPT_4O_MINI_COST)
    assert ev.ttft_ms is not None and 0 <= ev.ttft_ms <= ev.latency_ms


def test_openai_stream_keeps_usage_the_caller_asked_for(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink)
    chunks = list(
        client.chat.completions.create(model="gpt-4o", messages=MSG, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 1200
    assert only(sink).cost == GPT_4O_COST


def test_openai_stream_closed_early_records_partial_usage(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink)
    stream = client.chat.completions.create(model="slow", messages=MSG, stream=True)
    first = [next(stream) for _ in range(4)]
    assert len(first) == 4
    stream.close()
    ev = only(sink)
    assert (ev.status, ev.usage_source, ev.price_status, ev.streamed) == ("client_disconnect", "estimated", "missing", True)
    assert ev.output_tokens == 4  # one per content chunk seen
    assert ev.input_tokens == max(1, len("Say hello") // 4)
    stream.close()  # closing twice records nothing more
    assert len(sink.events) == 1


def test_openai_stream_broken_off_with_a_context_manager(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink)
    with client.chat.completions.create(model="gpt-4o", messages=MSG, stream=True) as stream:
        for chunk in stream:
            break
    ev = only(sink)
    assert ev.status == "client_disconnect" and ev.usage_source == "estimated" and ev.price_status == "estimated"
    assert ev.cost > 0


def test_openai_stream_closed_after_finish_reason_reads_the_usage(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink)
    stream = client.chat.completions.create(model="gpt-4o", messages=MSG, stream=True)
    for chunk in stream:
        if chunk.choices[0].finish_reason:
            break
    stream.close()
    ev = only(sink)
    assert (ev.status, ev.usage_source, ev.cost) == ("ok", "provider", GPT_4O_COST)


def test_openai_stream_dropped_without_close_is_recorded(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink)
    stream = client.chat.completions.create(model="gpt-4o", messages=MSG, stream=True)
    next(stream)
    del stream
    gc.collect()
    assert only(sink).status == "client_disconnect"


def test_openai_stream_without_usage_is_estimated(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink)
    list(client.chat.completions.create(model="no-usage", messages=MSG, stream=True))
    ev = only(sink)
    assert (ev.status, ev.usage_source, ev.output_tokens) == ("ok", "estimated", len(PIECES) + 2)


def test_openai_response_without_usage_is_estimated(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink)
    client.chat.completions.create(model="no-usage", messages=MSG)
    ev = only(sink)
    assert (ev.status, ev.usage_source, ev.input_tokens, ev.output_tokens) == ("ok", "estimated", 2, 3)


def test_raw_response_stream_is_metered_without_touching_the_request(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG, stream=True)
    assert "stream_options" not in fake.requests[-1]["body"]  # the app may read the raw bytes itself
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse()) == "Hello, world"
    ev = only(sink)
    assert (ev.status, ev.streamed, ev.usage_source) == ("ok", True, "estimated")


def test_openai_error_is_recorded_and_reraised(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="error-500", messages=MSG)
    ev = only(sink)
    assert (ev.status, ev.error_type, ev.http_status) == ("error", "InternalServerError", 500)
    assert (ev.input_tokens, ev.output_tokens, ev.cost, ev.usage_source) == (0, 0, D(0), "none")


def test_connection_error_has_no_http_status(sink: MemorySink) -> None:
    client = spendgate.instrument(openai.OpenAI(api_key="x", base_url="http://127.0.0.1:9/v1", max_retries=0), sink=sink)
    with pytest.raises(openai.APIConnectionError):
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    ev = only(sink)
    assert (ev.status, ev.error_type, ev.http_status, ev.endpoint) == ("error", "APIConnectionError", None, "embeddings")


def test_tags_from_instrument_body_and_header(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink, tags={"team": "search", "environment": "prod"})
    client.chat.completions.create(
        model="gpt-4o",
        messages=MSG,
        user="u-42",
        extra_headers={"X-Spendgate-Tags": "team=ads, feature=faq, ticket=T-1", "x-spendgate-experiment": "b", "x-other": "1"},
    )
    ev = only(sink)
    assert (ev.team, ev.environment, ev.feature, ev.user, ev.experiment) == ("ads", "prod", "faq", "u-42", "b")
    assert ev.tags == {"ticket": "T-1"}
    headers = {k.lower(): v for k, v in fake.requests[-1]["headers"].items()}
    assert not [h for h in headers if h.startswith("x-spendgate")]  # never reached the provider
    assert headers["x-other"] == "1"


def test_completions_and_embeddings(fake: FakeProvider, sink: MemorySink) -> None:
    # genai-prices matches embedding models only within a provider: say which (as for a proxy in front of OpenAI)
    client = openai_client(fake, sink, provider="openai")
    client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say")
    text = "".join(c.choices[0].text for c in client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say", stream=True))
    assert text == "Hello, world"
    client.embeddings.create(model="text-embedding-3-small", input="hello")
    done, streamed, emb = sink.events
    instruct_cost = D("0.0024")  # 1200*1.5 + 300*2 (no cached price: cached input at the input rate)
    assert (done.endpoint, done.cost, done.finish_reason) == ("completions", instruct_cost, "length")
    assert (streamed.streamed, streamed.cost, streamed.usage_source) == (True, instruct_cost, "provider")
    assert (emb.endpoint, emb.input_tokens, emb.output_tokens, emb.cost) == ("embeddings", 1000, 0, D("0.00002"))
    assert {e.provider for e in sink.events} == {"openai"}


def test_chat_completions_stream_helper_is_metered(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink)
    with client.chat.completions.stream(model="gpt-4o", messages=MSG) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello, world"
    assert final.usage is None  # as without spendgate: the caller did not ask for usage
    assert only(sink).cost == GPT_4O_COST


def test_with_raw_response_is_metered(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG)
    assert raw.parse().choices[0].message.content == "Hello, world"
    assert only(sink).cost == GPT_4O_COST


def test_instrument_is_idempotent_and_follows_copies(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink, tags={"team": "a"})
    create = client.chat.completions.create
    assert spendgate.instrument(client, sink=MemorySink()) is client
    assert client.chat.completions.create is create
    copy = client.with_options(timeout=30)
    copy.chat.completions.create(model="gpt-4o", messages=MSG)
    assert only(sink).team == "a"


def test_generator_messages_are_still_sent(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink)
    client.chat.completions.create(model="gpt-4o", messages=(m for m in MSG))
    assert fake.requests[-1]["body"]["messages"] == MSG
    assert only(sink).request_hash == request_hash({"model": "gpt-4o", "messages": MSG})


def test_provider_detection() -> None:
    assert detect_provider(openai.OpenAI(api_key="x")) == ("openai", "openai")
    azure = openai.AzureOpenAI(api_key="x", azure_endpoint="https://r.openai.azure.com", api_version="2024-10-21")
    assert detect_provider(azure) == ("openai", "azure_openai")
    assert detect_provider(openai.OpenAI(api_key="x", base_url="http://127.0.0.1:8000/v1")) == ("openai", "openai_compatible")
    assert detect_provider(anthropic.Anthropic(api_key="x")) == ("anthropic", "anthropic")
    assert detect_provider(anthropic.AsyncAnthropic(api_key="x")) == ("anthropic", "anthropic")
    with pytest.raises(TypeError):
        detect_provider(object())


def test_azure_client_prices_with_azure_catalog(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai.AzureOpenAI(api_key="x", azure_endpoint=fake.url, api_version="2024-10-21", max_retries=0)
    spendgate.instrument(client, sink=sink)
    list(client.chat.completions.create(model="prod-4o", messages=MSG, stream=True))
    assert fake.requests[-1]["path"] == "/openai/deployments/prod-4o/chat/completions"
    assert fake.requests[-1]["body"]["stream_options"] == {"include_usage": True}  # api-version 2024-10-21 has it
    ev = only(sink)
    assert (ev.provider, ev.model_requested, ev.model_used) == ("azure_openai", "prod-4o", "gpt-4o-2024-08-06")
    assert (ev.cost, ev.price_source) == (GPT_4O_COST, "genai-prices:azure/gpt-4o")


# --- OpenAI, async -----------------------------------------------------------------------


async def test_async_openai_non_stream_and_stream(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink, cls=openai.AsyncOpenAI)
    await client.chat.completions.create(model="gpt-4o", messages=MSG)
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True)
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)
    plain, streamed = sink.events
    assert (plain.cost, plain.streamed) == (GPT_4O_COST, False)
    assert (streamed.cost, streamed.streamed, streamed.status) == (GPT_4O_MINI_COST, True, "ok")
    assert streamed.ttft_ms is not None


async def test_async_openai_early_close_and_error(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink, cls=openai.AsyncOpenAI)
    stream = await client.chat.completions.create(model="slow", messages=MSG, stream=True)
    await stream.__anext__()
    await stream.__anext__()
    await stream.close()
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="error-400", messages=MSG)
    early, failed = sink.events
    assert (early.status, early.usage_source, early.output_tokens) == ("client_disconnect", "estimated", 2)
    assert (failed.status, failed.error_type, failed.http_status) == ("error", "BadRequestError", 400)


async def test_async_openai_cancelled_call(fake: FakeProvider, sink: MemorySink) -> None:
    client = openai_client(fake, sink, cls=openai.AsyncOpenAI)
    stream = await client.chat.completions.create(model="slow", messages=MSG, stream=True)

    async def consume() -> None:
        async for _ in stream:
            await asyncio.sleep(0.01)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.close()
    ev = only(sink)
    assert ev.status == "client_disconnect" and ev.usage_source == "estimated"


# --- Anthropic ---------------------------------------------------------------------------


def test_anthropic_messages_non_stream(fake: FakeProvider, sink: MemorySink) -> None:
    client = anthropic_client(fake, sink, tags={"feature": "chat"})
    msg = client.messages.create(model="claude-sonnet-4-5", metadata={"user_id": "u-7"}, **AMSG)
    assert msg.content[0].text == "Hello, world"
    ev = only(sink)
    assert (ev.endpoint, ev.wire_format, ev.provider) == ("messages", "anthropic", "anthropic")
    assert (ev.model_requested, ev.model_used, ev.finish_reason) == ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "end_turn")
    # normalized: input counts cache reads and writes
    assert (ev.input_tokens, ev.cache_read_tokens, ev.cache_write_tokens, ev.output_tokens) == (2500, 2000, 400, 250)
    assert (ev.cost, ev.price_source) == (SONNET_COST, "genai-prices:anthropic/claude-sonnet-4-5")
    assert (ev.feature, ev.user) == ("chat", "u-7")


def test_anthropic_create_stream(fake: FakeProvider, sink: MemorySink) -> None:
    client = anthropic_client(fake, sink)
    events = list(client.messages.create(model="claude-haiku-4-5", stream=True, **AMSG))
    assert [e.type for e in events][0] == "message_start" and events[-1].type == "message_stop"
    ev = only(sink)
    assert (ev.status, ev.streamed, ev.usage_source, ev.output_tokens, ev.cost) == ("ok", True, "provider", 250, HAIKU_COST)


def test_anthropic_stream_helper(fake: FakeProvider, sink: MemorySink) -> None:
    client = anthropic_client(fake, sink)
    with client.messages.stream(
        model="claude-sonnet-4-5", extra_headers={"x-spendgate-tags": "team=ml"}, **AMSG
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello, world" and final.usage.output_tokens == 250
    ev = only(sink)
    assert (ev.status, ev.streamed, ev.cost, ev.team) == ("ok", True, SONNET_COST, "ml")
    assert not [h for h in fake.requests[-1]["headers"] if h.lower().startswith("x-spendgate")]


def test_anthropic_stream_closed_early_keeps_start_usage(fake: FakeProvider, sink: MemorySink) -> None:
    client = anthropic_client(fake, sink)
    with client.messages.stream(model="slow", **AMSG) as stream:
        for i, _event in enumerate(stream):
            if i == 6:
                break
    ev = only(sink)
    assert (ev.status, ev.usage_source) == ("client_disconnect", "estimated")
    assert (ev.input_tokens, ev.cache_read_tokens) == (2500, 2000)  # from message_start
    assert ev.output_tokens >= 1


def test_anthropic_error(fake: FakeProvider, sink: MemorySink) -> None:
    client = anthropic_client(fake, sink)
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="error-500", **AMSG)
    with pytest.raises(anthropic.BadRequestError):
        with client.messages.stream(model="error-400", **AMSG):
            pass
    create_failed, stream_failed = sink.events
    assert (create_failed.status, create_failed.error_type, create_failed.http_status) == ("error", "InternalServerError", 500)
    assert (stream_failed.status, stream_failed.error_type, stream_failed.http_status) == ("error", "BadRequestError", 400)


async def test_async_anthropic(fake: FakeProvider, sink: MemorySink) -> None:
    client = anthropic_client(fake, sink, cls=anthropic.AsyncAnthropic)
    await client.messages.create(model="claude-haiku-4-5", **AMSG)
    stream = await client.messages.create(model="claude-sonnet-4-5", stream=True, **AMSG)
    kinds = [e.type async for e in stream]
    assert kinds[-1] == "message_stop"
    async with client.messages.stream(model="claude-haiku-4-5", **AMSG) as s:
        final = await s.get_final_message()
    assert final.content[0].text == "Hello, world"
    plain, streamed, helper = sink.events
    assert (plain.cost, plain.streamed) == (HAIKU_COST, False)
    assert (streamed.cost, streamed.streamed, streamed.status) == (SONNET_COST, True, "ok")
    assert (helper.cost, helper.status) == (HAIKU_COST, "ok")


async def test_async_anthropic_stream_closed_early(fake: FakeProvider, sink: MemorySink) -> None:
    client = anthropic_client(fake, sink, cls=anthropic.AsyncAnthropic)
    async with client.messages.stream(model="slow", **AMSG) as s:
        async for event in s:
            if event.type == "content_block_delta":
                break
    ev = only(sink)
    assert (ev.status, ev.usage_source, ev.input_tokens) == ("client_disconnect", "estimated", 2500)


# --- sinks -----------------------------------------------------------------------------


def test_ledger_sink_writes_sqlite(fake: FakeProvider, tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/sdk.db"
    client = spendgate.instrument(openai.OpenAI(api_key="x", base_url=fake.url + "/v1", max_retries=0), ledger=url)
    client.chat.completions.create(model="gpt-4o", messages=MSG)
    sink = client._spendgate_instrumentation.sink
    assert isinstance(sink, LedgerSink)
    assert sink.flush(10)
    sink.close()
    store = open_ledger(url)
    try:
        (ev,) = list(store.events())
    finally:
        store.close()
    assert (ev.source, ev.model_used, ev.cost) == ("sdk", "gpt-4o-2024-08-06", GPT_4O_COST)


def test_default_sink_comes_from_the_environment(fake: FakeProvider, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPENDGATE_URL", raising=False)
    monkeypatch.setenv("SPENDGATE_LEDGER", f"sqlite:///{tmp_path}/env.db")
    client = spendgate.instrument(openai.OpenAI(api_key="x", base_url=fake.url + "/v1", max_retries=0))
    sink = client._spendgate_instrumentation.sink
    assert isinstance(sink, LedgerSink) and sink.url.endswith("env.db")
    sink.close()


class FakeGateway(LocalServer):
    """Records what the GatewaySink posts; answers 500 to the first `fail_first` posts."""

    def __init__(self, fail_first: int = 0, always_fail: bool = False) -> None:
        super().__init__()
        self.posts: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.always_fail = always_fail

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/spendgate/events", self.ingest)

    async def ingest(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.posts.append({"auth": request.headers.get("authorization"), "events": body["events"]})
        if self.always_fail or len(self.posts) <= self.fail_first:
            return web.json_response({"error": {"message": "try later"}}, status=500)
        return web.json_response({"accepted": len(body["events"])})


def test_gateway_sink_batches_and_retries_after_a_500(fake: FakeProvider) -> None:
    with FakeGateway(fail_first=1) as gw:
        sink = GatewaySink(gw.url, "sk-team", batch_size=3, flush_interval_s=0.05, retry_initial_s=0.05)
        client = openai_client(fake, sink)  # type: ignore[arg-type]
        for _ in range(2):
            client.chat.completions.create(model="gpt-4o", messages=MSG)
        list(client.chat.completions.create(model="gpt-4o", messages=MSG, stream=True))
        assert sink.flush(10)
        assert sink.close(5)
    assert len(gw.posts) >= 2 and gw.posts[0]["events"] == gw.posts[1]["events"]  # the refused batch, again
    assert {p["auth"] for p in gw.posts} == {"Bearer sk-team"}
    accepted = [e for p in gw.posts[1:] for e in p["events"]]
    assert len(accepted) == 3 and sink.sent == 3 and sink.failed_posts >= 1
    events = [UsageEvent.from_dict(e) for e in accepted]
    assert [e.cost for e in events] == [GPT_4O_COST] * 3
    assert [e.streamed for e in events] == [False, False, True]
    assert all(e.source == "sdk" for e in events)


def test_gateway_sink_is_bounded_and_says_what_it_drops(caplog: pytest.LogCaptureFixture) -> None:
    with FakeGateway(always_fail=True) as gw:
        sink = GatewaySink(gw.url, None, batch_size=10, flush_interval_s=0.01, retry_initial_s=0.02, max_buffer=3)
        with caplog.at_level(logging.ERROR, logger="spendgate.sdk"):
            for i in range(5):
                sink.submit(UsageEvent(model_requested=f"m{i}"))
            assert sink.dropped == 2
            assert not sink.close(0.3)
        assert sink.dropped == 5
        assert any("dropping usage events" in r.getMessage() for r in caplog.records)
        assert any("never accepted" in r.getMessage() for r in caplog.records)
        assert all(p["auth"] is None for p in gw.posts)


def test_instrument_with_gateway_url(fake: FakeProvider) -> None:
    with FakeGateway() as gw:
        client = openai_client(fake, None)
        spendgate.instrument(client, gateway_url=gw.url, api_key="sk-gw", provider="openai")
        client.embeddings.create(model="text-embedding-3-small", input="hi")
        sink = client._spendgate_instrumentation.sink
        assert isinstance(sink, GatewaySink)
        assert sink.flush(10)
        sink.close(5)
        deadline = time.monotonic() + 5
        while not gw.posts and time.monotonic() < deadline:
            time.sleep(0.01)
    (post,) = gw.posts
    assert post["auth"] == "Bearer sk-gw" and post["events"][0]["endpoint"] == "embeddings"
