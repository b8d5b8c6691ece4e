"""Upstreams that misbehave or differ from the reference APIs: every billed call
still ends in the ledger with the right usage, and the client gets a clean answer."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from aiohttp import web

from conftest import Gateway, free_port, start_gateway

SEEN: list[dict[str, str]] = []


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _openai(request: web.Request) -> web.StreamResponse:
    SEEN.append(dict(request.headers))
    body = await request.json()
    prompt = body["messages"][-1]["content"]
    if prompt == "no-usage":
        return web.json_response({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "a reply of some forty characters......"}, "finish_reason": "stop"}]})
    if prompt == "array-body":
        return web.json_response([1, 2])
    if prompt == "auth-echo":
        key = request.headers.get("authorization", "")
        return web.json_response({"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error", "code": "invalid_api_key"}}, status=401)
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    if prompt == "bad-usage-stream":
        await resp.write(_chunk({"role": "assistant", "content": "hi"}))
        await resp.write(b'data: {"choices":[],"usage":"oops"}\n\n')
        await resp.write(b"data: [DONE]\n\n")
    elif prompt == "slow-stream":
        for i in range(5):
            await resp.write(_chunk({"content": f"part{i} "}))
            await asyncio.sleep(0.5)
        await resp.write(_chunk({}, "stop", usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}))
        await resp.write(b"data: [DONE]\n\n")
    elif prompt.startswith("linger-after-done"):  # the whole answer, then the end of body later (slow, or past the read timeout)
        await resp.write(_chunk({"role": "assistant", "content": "all of it"}, "stop", usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}))
        await resp.write(b"data: [DONE]\n\n")
        await asyncio.sleep(float(prompt.split()[1]))
    elif prompt == "usage-on-content":
        await resp.write(_chunk({"role": "assistant", "content": "hello"}))
        await resp.write(_chunk({"content": " there"}, "stop", usage={"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}))
        await resp.write(b"data: [DONE]\n\n")
    return resp


async def _anthropic(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    prompt = body["messages"][-1]["content"]
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    start = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
             "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 150, "output_tokens": 1}}}
    events = [
        ("message_start", start),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
    ]
    if prompt == "stream-error":
        events.append(("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    else:
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 77}}),
            ("message_stop", {"type": "message_stop"}),
        ]
    raw = b"".join(b"event: " + n.encode() + b"\r\ndata: " + orjson.dumps(d) + b"\r\n\r\n" for n, d in events)
    # split after every CR so CRLF pairs straddle TCP writes
    for piece in raw.split(b"\r"):
        await resp.write(piece + b"\r")
        await asyncio.sleep(0)
    return resp


@pytest.fixture(scope="module")
def quirky_upstream() -> Iterator[str]:
    port = free_port()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _openai)
    app.router.add_post("/v1/messages", _anthropic)
    runner = web.AppRunner(app)
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ready.wait(10)
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)


@pytest.fixture(scope="module")
def gw(quirky_upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp: Path = tmp_path_factory.mktemp("quirks")
    config = {
        "keys": [{"key": "sk-client-key", "id": "client"}],
        "ledger": {"url": f"sqlite:///{tmp / 'ledger.db'}", "flush_interval_ms": 20},
        "state": {"url": f"sqlite:///{tmp / 'state.db'}"},
        "deployments": [
            {"name": "q-openai", "provider": "openai", "model": "gpt-4o-mini", "base_url": f"{quirky_upstream}/v1", "api_key_env": "QUIRK_KEY", "timeout_s": 1.0},
            {"name": "q-anthropic", "provider": "anthropic", "model": "claude-haiku-4-5", "base_url": quirky_upstream, "api_key_env": "QUIRK_KEY"},
        ],
        "cache": {"policies": [{"name": "lingering", "match": {"feature": "linger"}, "scope": {"tenant": "*"}}]},
    }
    g = start_gateway(tmp, config, env={"QUIRK_KEY": "sk-provider-secret-123"})
    yield g
    g.process.terminate()


def _oai(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.openai_base, api_key="sk-client-key", max_retries=0)


def _msg(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_response_without_usage_is_estimated_not_free(gw: Gateway) -> None:
    r = _oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=_msg("no-usage"))
    [row] = gw.by_request(r.headers["x-spendgate-request-id"])
    assert row["status"] == "ok" and row["usage_source"] == "estimated" and row["price_status"] == "estimated"
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0 and Decimal(row["cost"]) > 0


def test_non_object_body_is_502_and_recorded(gw: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        _oai(gw).chat.completions.create(model="gpt-4o-mini", messages=_msg("array-body"))
    assert info.value.status_code == 502
    [row] = gw.by_request(info.value.response.headers["x-spendgate-request-id"])
    assert row["status"] == "error" and row["error_type"] == "bad_upstream_body"


def test_garbage_usage_in_stream_ends_cleanly_and_is_recorded(gw: Gateway) -> None:
    raw = _oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=_msg("bad-usage-stream"), stream=True)
    chunks = list(raw.parse())
    assert chunks and chunks[0].choices[0].delta.content == "hi"
    [row] = gw.by_request(raw.headers["x-spendgate-request-id"])
    assert row["status"] == "ok" and row["usage_source"] == "estimated"


def test_crlf_split_anthropic_stream_keeps_exact_usage(gw: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="sk-client-key", max_retries=0)
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=_msg("hello")) as stream:
        final = stream.get_final_message()
        rid = stream.response.headers["x-spendgate-request-id"]
    assert final.usage.output_tokens == 77
    [row] = gw.by_request(rid)
    assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (150, 77, "provider")
    assert Decimal(row["cost"]) == (150 * Decimal(1) + 77 * Decimal(5)) / Decimal(1_000_000)


def test_in_stream_upstream_error_is_relayed_once_and_recorded(gw: Gateway) -> None:
    r = httpx.post(f"{gw.url}/v1/messages", headers={"x-api-key": "sk-client-key"},
                   json={"model": "claude-haiku-4-5", "max_tokens": 50, "stream": True, "messages": _msg("stream-error")})
    assert r.text.count("event: error") == 1
    [row] = gw.by_request(r.headers["x-spendgate-request-id"])
    assert row["status"] == "error" and row["error_type"] == "overloaded_error" and row["input_tokens"] == 150


def test_upstream_auth_failure_hides_provider_key(gw: Gateway) -> None:
    SEEN.clear()
    with pytest.raises(openai.APIStatusError) as info:
        _oai(gw).chat.completions.create(model="gpt-4o-mini", messages=_msg("auth-echo"))
    assert info.value.status_code == 502  # not the client's key that was wrong
    assert "sk-provider-secret" not in info.value.response.text
    assert SEEN[-1]["Authorization"] == "Bearer sk-provider-secret-123"  # the provider got the provider key
    assert "sk-client-key" not in str(SEEN[-1])  # and never the client's
    [row] = gw.by_request(info.value.response.headers["x-spendgate-request-id"])
    assert row["error_type"] == "upstream_auth"


def test_long_stream_is_not_cut_by_timeout(gw: Gateway) -> None:
    started = time.monotonic()
    raw = _oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=_msg("slow-stream"), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert time.monotonic() - started > 2.0  # longer than the deployment's 1 s timeout
    assert text == "part0 part1 part2 part3 part4 "
    [row] = gw.by_request(raw.headers["x-spendgate-request-id"])
    assert row["status"] == "ok" and row["output_tokens"] == 5


def test_usage_on_content_chunk_is_hidden_when_not_asked(gw: Gateway) -> None:
    chunks = list(_oai(gw).chat.completions.create(model="gpt-4o-mini", messages=_msg("usage-on-content"), stream=True))
    assert [c.usage for c in chunks] == [None] * len(chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello there"


@pytest.mark.parametrize("linger", ["0.4", "1.5"])  # within / past the deployment's 1 s read timeout
def test_client_that_leaves_on_done_is_answered_and_cached(gw: Gateway, linger: str) -> None:
    """SDKs close on `[DONE]`; the upstream's end of body may come later. The call was
    answered in full: it is recorded as answered and its answer stored, not a disconnect."""
    prompt = f"linger-after-done {linger} {time.time_ns()}"
    body = {"model": "gpt-4o-mini", "messages": _msg(prompt), "temperature": 0, "stream": True}
    head = {"authorization": "Bearer sk-client-key", "x-spendgate-tags": "feature=linger,tenant=t1"}
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", headers=head, json=body, timeout=10) as r:
        rid = r.headers["x-spendgate-request-id"]
        assert r.headers["x-spendgate-cache"] == "miss"
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if line == "data: [DONE]":
                break  # leave before the upstream ends its body
    assert "data: [DONE]" in lines
    [row] = gw.by_request(rid)
    assert (row["status"], row["output_tokens"]) == ("ok", 3)
    again = _oai(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=_msg(prompt), temperature=0, extra_headers={"x-spendgate-tags": "feature=linger,tenant=t1"}
    )
    assert again.headers["x-spendgate-cache"] == "exact"
    assert again.parse().choices[0].message.content == "all of it"
