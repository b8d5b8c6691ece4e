"""The response cache end to end: a real `spendgate serve` in front of the real
simulator, called with the real `openai` and `anthropic` SDKs.

What a client sees (the `x-spendgate-cache` header, a hit's JSON or SSE replay
parsed by the SDK, `x-spendgate-cost: 0`), what the ledger records (a hit is one
row, cost 0, saved = the list cost of the call it replaced, no text), what the
report sums, and the cache's boundaries: tenants, TTLs, prompt versions,
flushes (admin API and CLI), restarts, budgets and rate limits.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from conftest import Gateway, base_config, start_gateway

ADMIN = "sg-admin-cache-e2e-4c1d"
HEADER = "x-spendgate-cache"
RUN = uuid.uuid4().hex[:8]  # prompts unique to this run

KEYS = [
    {"key": "sk-cache-acme", "id": "key-acme", "tags": {"tenant": "acme"}},
    {"key": "sk-cache-globex", "id": "key-globex", "tags": {"tenant": "globex"}},
    {"key": "sk-cache-anon", "id": "key-anon"},  # no tenant: nothing it asks is ever cached
    {"key": "sk-cache-budget", "id": "key-budget", "tags": {"tenant": "budgetco"}},  # a tiny budget
    {"key": "sk-cache-rl", "id": "key-rl", "tags": {"tenant": "rlco"}},  # 2 requests a minute
]
ACME, GLOBEX, ANON, BUDGETED, LIMITED = "sk-cache-acme", "sk-cache-globex", "sk-cache-anon", "sk-cache-budget", "sk-cache-rl"

POLICIES: list[dict[str, Any]] = [
    {"name": "shared-faq", "match": {"feature": "faq-shared"}, "shared_pool": "faq"},
    {"name": "short", "match": {"feature": "short-lived"}, "scope": {"tenant": "*"}, "ttl": 1},
    {"name": "templated", "match": {"feature": "templated"}, "scope": {"tenant": "*"}, "ttl": "1h", "ttl_by_template": {"flash": 1}},
    {"name": "chatbot", "match": {"feature": "chatbot"}, "scope": {"tenant": "*"}, "nondeterministic": True},
    {"name": "sem-loose", "match": {"feature": "sem-loose"}, "scope": {"tenant": "*"}, "semantic": True, "similarity_threshold": 0.95},
    {"name": "sem-anthropic", "match": {"feature": "sem-anthropic"}, "scope": {"tenant": "*"}, "semantic": True, "nondeterministic": True},
    {"name": "sem", "match": {"feature": "sem"}, "scope": {"tenant": "*"}, "semantic": True},  # the default (evaluated) threshold
    {"name": "tenants", "match": {}, "scope": {"tenant": "*"}},
]
# Budgets and rate limits on keys of their own; a model whose price makes costs round:
# input free, an output token $0.0001, so a 5-token answer spends the whole $0.0005 budget.
LIMITS: dict[str, Any] = {
    "budgets": [{"name": "tiny", "scope": {"key": "key-budget"}, "window": {"rolling": "1h"}, "limit": "0.0005"}],
    "rate_limits": [{"name": "two-per-minute", "scope": {"key": "key-rl"}, "rpm": 2}],
}


def cache_config(simulator: str, tmp: Path, **extra: Any) -> dict[str, Any]:
    config = base_config(simulator, tmp / "ledger.db")
    config["keys"] += KEYS
    config["deployments"].append(
        {"name": "budget-llm", "provider": "openai_compatible", "model": "budget-llm", "base_url": f"{simulator}/v1",
         "api_key_env": "SIM_OPENAI_KEY", "price": {"input_per_mtok": "0", "output_per_mtok": "100"}}
    )  # fmt: skip
    config.update(LIMITS)
    config["cache"] = {"url": f"sqlite:///{tmp / 'cache.db'}", "flush_interval_ms": 20, "policies": POLICIES}
    config["privacy"] = {"store_text": True}  # misses keep their text: hits must still not
    config.update(extra)
    return config


@pytest.fixture(scope="module")
def gw(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("cache-e2e")
    g = start_gateway(tmp, cache_config(simulator, tmp), env={"SPENDGATE_ADMIN_KEY": ADMIN})
    yield g
    out = g.process.terminate()
    assert "Traceback" not in out, out


# ---- helpers -----------------------------------------------------------------------------------


def uniq(label: str) -> str:
    return f"{label} {RUN}-{uuid.uuid4().hex[:6]}"


def oai(gw: Gateway, key: str = ACME) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0)


def ant(gw: Gateway, key: str = ACME) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def headers(cache: str | None = None, tags: str | None = None) -> dict[str, str]:
    h = {}
    if cache is not None:
        h[HEADER] = cache
    if tags is not None:
        h["x-spendgate-tags"] = tags
    return h


def chat(
    gw: Gateway, prompt: str, *, key: str = ACME, model: str = "gpt-4o", out: int = 6, temperature: float | None = 0,
    cache: str | None = None, tags: str | None = None, **kw: Any,
) -> Any:  # fmt: skip
    """A non-streamed chat call; the raw response (headers + parse())."""
    if temperature is not None:
        kw["temperature"] = temperature
    return oai(gw, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": f"{prompt} [[sim:output_tokens={out}]]"}],
        extra_headers=headers(cache, tags), **kw,
    )  # fmt: skip


def chat_stream(
    gw: Gateway, prompt: str, *, key: str = ACME, model: str = "gpt-4o", out: int = 6, include_usage: bool = True,
    cache: str | None = None, tags: str | None = None,
) -> tuple[Any, list[Any]]:  # fmt: skip
    """A streamed chat call: (response headers, the chunks the SDK parsed)."""
    kw: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    with oai(gw, key).chat.completions.with_streaming_response.create(
        model=model, messages=[{"role": "user", "content": f"{prompt} [[sim:output_tokens={out}]]"}], temperature=0,
        stream=True, extra_headers=headers(cache, tags), **kw,
    ) as resp:  # fmt: skip
        chunks = list(resp.parse())
    return resp.headers, chunks


def stream_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def message(
    gw: Gateway, prompt: str, *, key: str = ACME, model: str = "claude-haiku-4-5", out: int = 6, cache: str | None = None,
    tags: str | None = "feature=chatbot",
) -> Any:  # fmt: skip
    """A non-streamed Anthropic call (no temperature: the 2.x SDK has none); the raw response."""
    return ant(gw, key).messages.with_raw_response.create(
        model=model, max_tokens=64, messages=[{"role": "user", "content": f"{prompt} [[sim:output_tokens={out}]]"}],
        extra_headers=headers(cache, tags),
    )  # fmt: skip


def message_stream(
    gw: Gateway, prompt: str, *, key: str = ACME, model: str = "claude-haiku-4-5", out: int = 6, cache: str | None = None,
    tags: str | None = "feature=chatbot",
) -> tuple[Any, Any, list[str]]:  # fmt: skip
    """A streamed Anthropic call: (headers, the final message, the event types in order)."""
    with ant(gw, key).messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": f"{prompt} [[sim:output_tokens={out}]]"}],
        extra_headers=headers(cache, tags),
    ) as stream:  # fmt: skip
        types = [ev.type for ev in stream]
        final = stream.get_final_message()
    return stream.response.headers, final, types


def rid(r: Any) -> str:
    return r.headers["x-spendgate-request-id"]


def rows_of(gw: Gateway, *request_ids: str) -> list[dict[str, Any]]:
    """One ledger row per request id, in the order given (waits until all are written)."""
    marks = ",".join("?" * len(request_ids))
    rows = gw.wait_rows(f"request_id IN ({marks})", tuple(request_ids), count=len(request_ids))
    by_id = {r["request_id"]: r for r in rows}
    assert len(rows) == len(by_id) == len(set(request_ids)), rows
    return [by_id[i] for i in request_ids]


def row_of(gw: Gateway, request_id: str) -> dict[str, Any]:
    [row] = rows_of(gw, request_id)
    return row


def check_hit(miss: dict[str, Any], hit: dict[str, Any], status: str = "exact") -> None:
    """The miss is a priced upstream call; the hit one row with cost 0 and saved = the miss's list cost."""
    assert miss["cache_status"] == "miss" and miss["route_reason"] != "cache"
    assert Decimal(miss["list_cost"]) > 0 and Decimal(miss["cost"]) > 0
    assert (hit["cache_status"], hit["route_reason"], hit["saved_by"], hit["status"]) == (status, "cache", "cache", "ok")
    assert Decimal(hit["cost"]) == 0 and Decimal(hit["list_cost"]) == 0
    assert Decimal(hit["saved"]) == Decimal(miss["list_cost"])  # exactly, from the TEXT columns
    assert hit["cache_scope"] == miss["cache_scope"]
    assert (hit["provider"], hit["deployment"], hit["model_used"]) == (miss["provider"], miss["deployment"], miss["model_used"])
    assert hit["request_text"] is None and hit["response_text"] is None
    assert miss["request_text"], "store_text is on: the miss keeps its text (so the hit's NULL means something)"


def assert_miss_then_hit_rows(gw: Gateway, miss_rid: str, hit_rid: str, status: str = "exact") -> tuple[dict[str, Any], dict[str, Any]]:
    miss, hit = rows_of(gw, miss_rid, hit_rid)
    check_hit(miss, hit, status)
    return miss, hit


def admin(gw: Gateway, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, f"{gw.url}/admin/{path}", json=body, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10)


def flush(gw: Gateway, **body: Any) -> int:
    r = admin(gw, "POST", "cache/flush", body)
    assert r.status_code == 200, r.text
    return r.json()["flushed"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPENDGATE_URL", "SPENDGATE_ADMIN_KEY")}
    return subprocess.run([sys.executable, "-m", "spendgate.cli", *args], capture_output=True, text=True, env=env, timeout=60)


def cache_rows(path: Path, where: str = "1=1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"SELECT * FROM cache_entries WHERE {where}", params)]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def wait_cache_rows(path: Path, where: str, params: tuple[Any, ...] = (), count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = cache_rows(path, where, params)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


# ---- hits in both formats, JSON and streams ---------------------------------------------------------


def test_openai_chat_miss_then_exact_hit(gw: Gateway) -> None:
    q = uniq("What does the refund policy say?")
    first = chat(gw, q)
    assert first.headers[HEADER] == "miss"
    miss_cost = Decimal(first.headers["x-spendgate-cost"])
    assert miss_cost > 0
    second = chat(gw, q, user="someone-else", metadata={"trace": "x"}, store=False)  # who asks changes nothing
    assert second.headers[HEADER] == "exact"
    assert second.headers["x-spendgate-cost"] == "0"
    a, b = first.parse(), second.parse()
    assert b.choices[0].message.content == a.choices[0].message.content
    assert b.choices[0].finish_reason == a.choices[0].finish_reason
    assert b.usage.model_dump() == a.usage.model_dump()  # what the answer cost when it was made
    assert b.id != a.id and b.id == f"chatcmpl-{rid(second)}"  # a replay is a new response
    miss, hit = assert_miss_then_hit_rows(gw, rid(first), rid(second))
    assert Decimal(miss["cost"]) == miss_cost
    assert (hit["cache_scope"], hit["tenant"], hit["key_id"], hit["streamed"]) == ("tenant=acme", "acme", "key-acme", 0)
    assert hit["similarity"] is None and hit["model_requested"] == "gpt-4o"
    assert chat(gw, q, out=7).headers[HEADER] == "miss"  # a different request
    assert chat(gw, q, model="gpt-4o-mini").headers[HEADER] == "miss"  # another model


def test_streaming_client_hits_an_entry_stored_by_a_json_call(gw: Gateway) -> None:
    q = uniq("Summarise the quarterly budget.")
    first = chat(gw, q, out=40)
    assert first.headers[HEADER] == "miss"
    text = first.parse().choices[0].message.content
    usage = first.parse().usage

    h, chunks = chat_stream(gw, q, out=40, include_usage=True)
    assert (h[HEADER], h["x-spendgate-cost"]) == ("exact", "0")
    assert h["content-type"].startswith("text/event-stream")
    assert stream_text(chunks) == text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, "text is streamed in pieces"
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert {c.id for c in chunks} == {f"chatcmpl-{h['x-spendgate-request-id']}"}
    hit = row_of(gw, h["x-spendgate-request-id"])
    assert (hit["cache_status"], hit["streamed"], Decimal(hit["cost"])) == ("exact", 1, 0)
    assert Decimal(hit["saved"]) == Decimal(row_of(gw, rid(first))["list_cost"])

    h, chunks = chat_stream(gw, q, out=40, include_usage=False)  # stream_options is not part of the key
    assert h[HEADER] == "exact"
    assert stream_text(chunks) == text and all(c.usage is None for c in chunks)


def test_json_client_hits_an_entry_stored_by_a_stream_with_usage(gw: Gateway) -> None:
    q = uniq("Explain the monthly report.")
    h, chunks = chat_stream(gw, q, out=30, include_usage=True)
    assert h[HEADER] == "miss"
    text, usage = stream_text(chunks), chunks[-1].usage
    second = chat(gw, q, out=30)
    assert second.headers[HEADER] == "exact"
    resp = second.parse()
    assert resp.choices[0].message.content == text and resp.choices[0].finish_reason == "stop"
    assert resp.usage.model_dump() == usage.model_dump()
    assert_miss_then_hit_rows(gw, h["x-spendgate-request-id"], rid(second))
    h2, chunks2 = chat_stream(gw, q, out=30)
    assert h2[HEADER] == "exact" and stream_text(chunks2) == text


def test_openai_stream_without_include_usage_is_stored_too(gw: Gateway) -> None:
    """Most OpenAI streaming clients never ask for usage; the relay still reads it upstream,
    so their answers must be cached like any other."""
    q = uniq("List the open review items.")
    h, chunks = chat_stream(gw, q, out=12, include_usage=False)
    assert h[HEADER] == "miss" and all(c.usage is None for c in chunks)
    again = chat(gw, q, out=12)
    assert again.headers[HEADER] == "exact", "a streamed answer without include_usage was not stored"
    assert again.parse().choices[0].message.content == stream_text(chunks)
    assert again.parse().usage.completion_tokens == 12


def test_anthropic_messages_json_and_stream_hits(gw: Gateway) -> None:
    q = uniq("How do budgets reset?")
    first = message(gw, q, out=30)
    assert first.headers[HEADER] == "miss"
    a = first.parse()
    second = message(gw, q, out=30)
    assert (second.headers[HEADER], second.headers["x-spendgate-cost"]) == ("exact", "0")
    b = second.parse()
    assert [c.text for c in b.content] == [c.text for c in a.content]
    assert (b.stop_reason, b.usage.input_tokens, b.usage.output_tokens) == (a.stop_reason, a.usage.input_tokens, a.usage.output_tokens)
    assert b.id == f"msg_{rid(second)}" and b.id != a.id
    miss, hit = assert_miss_then_hit_rows(gw, rid(first), rid(second))
    assert hit["wire_format"] == "anthropic" and hit["provider"] == "anthropic"

    # a streaming client reads the entry a JSON call stored
    h, final, types = message_stream(gw, q, out=30)
    assert (h[HEADER], h["x-spendgate-cost"]) == ("exact", "0")
    assert types[0] == "message_start" and types[-1] == "message_stop" and "content_block_delta" in types
    assert [c.text for c in final.content] == [c.text for c in a.content]
    assert (final.stop_reason, final.usage.output_tokens) == (a.stop_reason, a.usage.output_tokens)
    assert row_of(gw, h["x-spendgate-request-id"])["streamed"] == 1

    # and the other way round: a stream stores, a JSON call hits
    q2 = uniq("Where are the prices kept?")
    h, streamed, _ = message_stream(gw, q2, out=25)
    assert h[HEADER] == "miss"
    r = message(gw, q2, out=25)
    assert r.headers[HEADER] == "exact"
    assert [c.text for c in r.parse().content] == [c.text for c in streamed.content]
    assert r.parse().usage.output_tokens == streamed.usage.output_tokens == 25
    assert_miss_then_hit_rows(gw, h["x-spendgate-request-id"], rid(r))


def test_anthropic_calls_need_a_nondeterministic_policy_or_the_use_header(gw: Gateway) -> None:
    q = uniq("Which team owns the cache?")
    # the default policy caches temperature-0 calls only, and Anthropic's SDK sends no temperature
    assert message(gw, q, tags=None).headers[HEADER] == "bypass"
    assert message(gw, q, tags=None).headers[HEADER] == "bypass"
    first = message(gw, q, tags=None, cache="use")
    assert first.headers[HEADER] == "miss"
    second = message(gw, q, tags=None, cache="use")
    assert second.headers[HEADER] == "exact"
    assert_miss_then_hit_rows(gw, rid(first), rid(second))
    assert message(gw, q, tags=None).headers[HEADER] == "bypass"  # without `use`: not even read


def test_openai_client_on_a_claude_model_is_cached_in_openai_format(gw: Gateway) -> None:
    q = uniq("Translate the budget notice.")
    first = chat(gw, q, model="claude-haiku-4-5", out=15)
    assert first.headers[HEADER] == "miss"
    h, chunks = chat_stream(gw, q, model="claude-haiku-4-5", out=15)
    assert h[HEADER] == "exact"
    assert stream_text(chunks) == first.parse().choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 15
    assert_miss_then_hit_rows(gw, rid(first), h["x-spendgate-request-id"])


def test_legacy_completions_and_embeddings_exact_hits(gw: Gateway) -> None:
    client = oai(gw)
    prompt = uniq("Complete the sentence: the budget") + " [[sim:output_tokens=20]]"
    kw: dict[str, Any] = {"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "temperature": 0, "max_tokens": 30}
    first = client.completions.with_raw_response.create(**kw)
    assert first.headers[HEADER] == "miss"
    second = client.completions.with_raw_response.create(**kw)
    assert (second.headers[HEADER], second.headers["x-spendgate-cost"]) == ("exact", "0")
    assert second.parse().choices[0].text == first.parse().choices[0].text
    assert second.parse().usage.completion_tokens == 20
    assert_miss_then_hit_rows(gw, rid(first), rid(second))
    with client.completions.with_streaming_response.create(stream=True, stream_options={"include_usage": True}, **kw) as resp:
        chunks = list(resp.parse())
    assert resp.headers[HEADER] == "exact"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == first.parse().choices[0].text
    assert chunks[-1].usage.completion_tokens == 20

    text = uniq("an embedding of the refund policy")
    e1 = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=[text, "second input"])
    assert e1.headers[HEADER] == "miss"  # embeddings are deterministic without a temperature
    e2 = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=[text, "second input"])
    assert (e2.headers[HEADER], e2.headers["x-spendgate-cost"]) == ("exact", "0")
    assert [d.embedding for d in e2.parse().data] == [d.embedding for d in e1.parse().data]
    assert e2.parse().usage.prompt_tokens == e1.parse().usage.prompt_tokens
    miss, hit = assert_miss_then_hit_rows(gw, rid(e1), rid(e2))
    assert hit["endpoint"] == "embeddings"
    e3 = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=[text, "second input"], dimensions=256)
    assert e3.headers[HEADER] == "miss"


# ---- headers --------------------------------------------------------------------------------------


def test_bypass_refresh_and_use_headers(gw: Gateway) -> None:
    q = uniq("Who approves burst grants?")
    assert chat(gw, q, cache="bypass").headers[HEADER] == "bypass"  # neither read nor written ...
    first = chat(gw, q)
    assert first.headers[HEADER] == "miss"  # ... so this is the first to store
    assert chat(gw, q).headers[HEADER] == "exact"
    r = chat(gw, q, cache="bypass")
    assert r.headers[HEADER] == "bypass" and Decimal(r.headers["x-spendgate-cost"]) > 0
    row = row_of(gw, rid(r))
    assert (row["cache_status"], row["route_reason"]) == ("bypass", "direct") and Decimal(row["cost"]) > 0

    refreshed = chat(gw, q, cache="Refresh")  # not read: goes upstream, and stores the new answer
    assert refreshed.headers[HEADER] == "miss" and Decimal(refreshed.headers["x-spendgate-cost"]) > 0
    assert row_of(gw, rid(refreshed))["cache_status"] == "miss"
    hit = chat(gw, q)
    assert hit.headers[HEADER] == "exact"
    assert_miss_then_hit_rows(gw, rid(refreshed), rid(hit))

    # a non-deterministic call is cached only when the caller opts it in
    hot = uniq("Write a slogan for the cache.")
    assert chat(gw, hot, temperature=0.8).headers[HEADER] == "bypass"
    assert chat(gw, hot, temperature=None).headers[HEADER] == "bypass"  # no temperature: not deterministic
    assert chat(gw, hot, temperature=0.8, cache="use").headers[HEADER] == "miss"
    assert chat(gw, hot, temperature=0.8, cache="USE").headers[HEADER] == "exact"
    assert chat(gw, hot, temperature=0.8).headers[HEADER] == "bypass"


def test_bad_cache_header_is_a_400_in_the_callers_format(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(gw, uniq("hi"), cache="sometimes")
    body = info.value.response.json()
    assert info.value.status_code == 400
    assert HEADER in body["error"]["message"] and "sometimes" in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"

    with pytest.raises(anthropic.BadRequestError) as ainfo:
        message(gw, uniq("hi"), cache="always")
    body = ainfo.value.response.json()
    assert ainfo.value.status_code == 400
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert HEADER in body["error"]["message"]
    time.sleep(0.1)
    for exc in (info.value, ainfo.value):
        assert gw.rows("request_id = ?", (exc.response.headers["x-spendgate-request-id"],)) == []


def test_every_response_says_what_the_cache_did(gw: Gateway) -> None:
    q = uniq("Is the header always there?")
    seen = [
        chat(gw, q).headers[HEADER],  # miss
        chat(gw, q).headers[HEADER],  # exact
        chat(gw, q, key=ANON).headers[HEADER],  # no tenant: bypass
        chat(gw, q, cache="bypass").headers[HEADER],
        message(gw, q).headers[HEADER],  # miss (anthropic)
        message(gw, q).headers[HEADER],  # exact
        oai(gw).embeddings.with_raw_response.create(model="text-embedding-3-small", input=q, extra_headers=headers(cache="bypass")).headers[HEADER],
        chat_stream(gw, q + " streamed")[0][HEADER],  # miss (streamed)
        chat_stream(gw, q + " streamed")[0][HEADER],  # exact (streamed)
        message_stream(gw, q, key=ANON)[0][HEADER],  # bypass (streamed)
    ]
    assert seen == ["miss", "exact", "bypass", "bypass", "miss", "exact", "bypass", "miss", "exact", "bypass"]


def test_failed_and_broken_answers_are_never_stored(gw: Gateway) -> None:
    q = uniq("Fail upstream.") + " [[sim:fault=500]]"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as info:
            chat(gw, q)
        assert info.value.response.headers[HEADER] == "miss"  # the header is on error responses too
    marker = uniq("cut")
    cut = f"Cut the stream {marker} [[sim:fault=cut]]"
    for _ in range(2):
        with pytest.raises(openai.APIError):
            chat_stream(gw, cut, out=80)
    with pytest.raises(anthropic.APIStatusError) as ainfo:
        message(gw, uniq("Fail upstream.") + " [[sim:fault=529]]")
    assert ainfo.value.response.headers[HEADER] == "miss"
    with pytest.raises(anthropic.APIError):
        message_stream(gw, cut, out=80)
    with pytest.raises(anthropic.APIError):
        message_stream(gw, cut, out=80)  # a cut stream stored nothing: upstream again, cut again
    rows = gw.wait_rows("request_text LIKE ?", (f"%{marker}%",), count=4)
    assert len(rows) == 4 and all(r["cache_status"] == "miss" and r["status"] != "ok" for r in rows), rows


# ---- TTLs and prompt versions ------------------------------------------------------------------------


def test_ttl_and_ttl_by_template_expire_entries(gw: Gateway) -> None:
    short = uniq("What is the exchange rate today?")
    flash = uniq("Flash sale banner text.")
    stable = uniq("Terms of service summary.")
    assert chat(gw, short, tags="feature=short-lived").headers[HEADER] == "miss"
    assert chat(gw, short, tags="feature=short-lived").headers[HEADER] == "exact"
    assert chat(gw, flash, tags="feature=templated,prompt_template=flash").headers[HEADER] == "miss"
    assert chat(gw, flash, tags="feature=templated,prompt_template=flash").headers[HEADER] == "exact"
    assert chat(gw, stable, tags="feature=templated,prompt_template=stable").headers[HEADER] == "miss"
    assert chat(gw, stable, tags="feature=templated,prompt_template=stable").headers[HEADER] == "exact"
    time.sleep(1.3)
    assert chat(gw, short, tags="feature=short-lived").headers[HEADER] == "miss"  # 1 s policy TTL
    assert chat(gw, short, tags="feature=short-lived").headers[HEADER] == "exact"  # stored again
    assert chat(gw, flash, tags="feature=templated,prompt_template=flash").headers[HEADER] == "miss"  # 1 s template TTL
    assert chat(gw, stable, tags="feature=templated,prompt_template=stable").headers[HEADER] == "exact"  # the policy's 1 h


def test_a_policys_ttl_holds_when_another_policy_stored_the_same_request(gw: Gateway) -> None:
    q = uniq("What is the exchange rate right now?")
    assert chat(gw, q).headers[HEADER] == "miss"  # stored under `tenants`: 1 h
    time.sleep(1.3)
    r = chat(gw, q, tags="feature=short-lived")  # covered by `short`: answers live 1 s
    assert r.headers[HEADER] == "miss", "a 1 s policy served an answer 1.3 s old"


def test_a_new_prompt_version_misses_and_flushes_by_version_feature_scope_model_and_all(gw: Gateway) -> None:
    q = uniq("Greet the customer.")
    v1, v2 = "feature=greeter,prompt_template=greet,prompt_version=v1", "feature=greeter,prompt_template=greet,prompt_version=v2"
    assert chat(gw, q, tags=v1).headers[HEADER] == "miss"
    assert chat(gw, q, tags=v1).headers[HEADER] == "exact"
    assert chat(gw, q, tags=v2).headers[HEADER] == "miss"  # a new prompt version never gets the old answer
    assert chat(gw, q, tags=v2).headers[HEADER] == "exact"
    assert chat(gw, q, tags=v1).headers[HEADER] == "exact"  # the old version's entry is still there

    assert flush(gw, prompt_version="v1", prompt_template="greet") == 1
    assert chat(gw, q, tags=v1).headers[HEADER] == "miss"
    assert chat(gw, q, tags=v2).headers[HEADER] == "exact"
    assert flush(gw, feature="greeter") == 2  # v1 (stored again) and v2
    assert chat(gw, q, tags=v2).headers[HEADER] == "miss"

    # by scope: one tenant's entries only
    s = uniq("Scope flush question.")
    for key in (ANON, GLOBEX):  # a shared app key sets the tenant per call; a tenant's key has its own
        assert chat(gw, s, key=key, tags="tenant=initech" if key == ANON else None).headers[HEADER] == "miss"
    assert flush(gw, scope="tenant=initech") == 1
    assert chat(gw, s, key=ANON, tags="tenant=initech").headers[HEADER] == "miss"
    assert chat(gw, s, key=GLOBEX).headers[HEADER] == "exact"

    # by model (as the client named it)
    m = uniq("Model flush question.")
    assert chat(gw, m, model="llama-3.1-8b-instruct").headers[HEADER] == "miss"
    assert chat(gw, m, model="gpt-4o").headers[HEADER] == "miss"
    assert flush(gw, model="llama-3.1-8b-instruct") == 1
    assert chat(gw, m, model="llama-3.1-8b-instruct").headers[HEADER] == "miss"
    assert chat(gw, m, model="gpt-4o").headers[HEADER] == "exact"

    # by policy
    t = uniq("Policy flush question.")
    assert chat(gw, t, tags="feature=templated,prompt_template=stable").headers[HEADER] == "miss"
    assert flush(gw, policy="templated") >= 1
    assert chat(gw, t, tags="feature=templated,prompt_template=stable").headers[HEADER] == "miss"
    assert chat(gw, m, model="gpt-4o").headers[HEADER] == "exact"

    # filters that are wrong are refused, and nothing is flushed
    for bad in ({}, {"feature": ""}, {"all": True, "feature": "x"}, {"colour": "red"}, {"all": "yes"}):
        r = admin(gw, "POST", "cache/flush", bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["message"]
    assert httpx.post(f"{gw.url}/admin/cache/flush", json={"all": True}, headers={"authorization": f"Bearer {ACME}"}).status_code == 401
    assert chat(gw, m, model="gpt-4o").headers[HEADER] == "exact"

    # everything
    status = admin(gw, "GET", "cache").json()
    assert status["enabled"] is True and status["entries"] > 0
    assert status["entries"] == sum(status["by_scope"].values())
    assert flush(gw, all=True) == status["entries"]
    assert admin(gw, "GET", "cache").json()["entries"] == 0
    assert chat(gw, m, model="gpt-4o").headers[HEADER] == "miss"


def test_cache_cli_status_and_flush(gw: Gateway) -> None:
    conn = ("--url", gw.url, "--admin-key", ADMIN)
    faq = uniq("What are the opening hours?")
    other = uniq("Who is on call?")
    assert chat(gw, faq, tags="feature=faq").headers[HEADER] == "miss"
    assert chat(gw, faq, key=GLOBEX, tags="feature=faq").headers[HEADER] == "miss"
    assert chat(gw, other, tags="feature=oncall").headers[HEADER] == "miss"

    p = cli("cache", "status", "--json", *conn)
    assert p.returncode == 0, p.stderr
    status = json.loads(p.stdout)
    assert status["enabled"] is True and status["entries"] >= 3
    assert status["by_scope"]["tenant=acme"] >= 2 and status["by_scope"]["tenant=globex"] >= 1
    assert status["policies"] == [pol["name"] for pol in POLICIES]
    assert "cache.db" in status["storage"]
    p = cli("cache", "status", *conn)
    assert p.returncode == 0 and f"{status['entries']} stored answers" in p.stdout and "tenant=acme" in p.stdout

    p = cli("cache", "flush", "--feature", "faq", *conn)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "Flushed 2 stored answers."
    assert chat(gw, faq, tags="feature=faq").headers[HEADER] == "miss"
    assert chat(gw, other, tags="feature=oncall").headers[HEADER] == "exact"
    p = cli("cache", "flush", "--scope", "tenant=acme", "--feature", "oncall", "--json", *conn)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["flushed"] == 1
    assert chat(gw, other, tags="feature=oncall").headers[HEADER] == "miss"

    p = cli("cache", "flush", *conn)  # no filter: refused before anything is sent
    assert p.returncode == 1 and "--all" in p.stderr
    p = cli("cache", "flush", "--all", "--feature", "faq", *conn)
    assert p.returncode == 1
    p = cli("cache", "status", "--url", gw.url, "--admin-key", "sk-wrong")
    assert p.returncode == 1 and "admin key" in p.stderr
    p = cli("cache", "flush", "--all", *conn)
    assert p.returncode == 0 and p.stdout.startswith("Flushed ")
    assert json.loads(cli("cache", "status", "--json", *conn).stdout)["entries"] == 0


# ---- scopes -------------------------------------------------------------------------------------


def test_one_tenants_answer_is_never_served_to_another(gw: Gateway) -> None:
    q = uniq("What is our contract renewal date?")
    a1 = chat(gw, q, key=ACME)
    assert a1.headers[HEADER] == "miss"
    assert chat(gw, q, key=ACME).headers[HEADER] == "exact"
    g1 = chat(gw, q, key=GLOBEX)
    assert g1.headers[HEADER] == "miss", "globex was served acme's answer"
    g2 = chat(gw, q, key=GLOBEX)
    assert g2.headers[HEADER] == "exact"
    miss, hit = assert_miss_then_hit_rows(gw, rid(g1), rid(g2))
    assert miss["cache_scope"] == hit["cache_scope"] == "tenant=globex" and hit["tenant"] == "globex"
    assert row_of(gw, rid(a1))["cache_scope"] == "tenant=acme"
    # the same in Anthropic's format
    assert message(gw, q, key=ACME).headers[HEADER] == "miss"
    assert message(gw, q, key=GLOBEX).headers[HEADER] == "miss"
    assert message(gw, q, key=GLOBEX).headers[HEADER] == "exact"

    # a call without a tenant has no boundary: never read, never written
    for _ in range(2):
        r = chat(gw, q, key=ANON)
        assert r.headers[HEADER] == "bypass"
        row = row_of(gw, rid(r))
        assert (row["cache_status"], row["cache_scope"], row["route_reason"]) == ("bypass", None, "direct")
        assert Decimal(row["cost"]) > 0
    assert chat(gw, q, key=ANON, cache="use").headers[HEADER] == "bypass"
    assert chat(gw, q, key=ANON, cache="refresh").headers[HEADER] == "bypass"


def test_a_key_cannot_claim_another_tenant_to_read_its_cache(gw: Gateway) -> None:
    q = uniq("Globex's confidential pricing question.")
    assert chat(gw, q, key=GLOBEX).headers[HEADER] == "miss"
    assert chat(gw, q, key=ACME, tags="tenant=globex").headers[HEADER] != "exact", "acme's key read globex's cache"


def test_a_shared_pool_is_shared_across_tenants(gw: Gateway) -> None:
    q = uniq("What are the public holidays this year?")
    first = chat(gw, q, key=ACME, tags="feature=faq-shared")
    assert first.headers[HEADER] == "miss"
    for key in (GLOBEX, ANON):  # another tenant, and a caller with no tenant at all
        r = chat(gw, q, key=key, tags="feature=faq-shared")
        assert r.headers[HEADER] == "exact"
        miss, hit = assert_miss_then_hit_rows(gw, rid(first), rid(r))
        assert hit["cache_scope"] == "pool:faq" and hit["key_id"] != miss["key_id"]
    assert chat(gw, q, key=GLOBEX).headers[HEADER] == "miss"  # outside the feature: the tenant's own scope
    assert admin(gw, "GET", "cache").json()["by_scope"]["pool:faq"] >= 1


# ---- ledger, report, privacy --------------------------------------------------------------------


def test_hits_save_exactly_the_list_cost_and_the_report_agrees_with_the_ledger(gw: Gateway) -> None:
    feature = f"ledger-{RUN}"
    tags = f"feature={feature}"
    pairs: list[tuple[str, str]] = []  # (miss, hit) request ids
    for i, out in enumerate((7, 33, 120)):
        q, model = uniq(f"ledger question {i}"), ("gpt-4o" if i % 2 else "gpt-4o-mini")
        first = chat(gw, q, out=out, tags=tags, model=model)
        assert first.headers[HEADER] == "miss"
        for _ in range(i + 1):
            r = chat(gw, q, out=out, tags=tags, model=model)
            assert r.headers[HEADER] == "exact"
            pairs.append((rid(first), rid(r)))
    q = uniq("ledger anthropic question")
    am = message(gw, q, out=50, tags=tags, cache="use")
    ah = message(gw, q, out=50, tags=tags, cache="use")
    assert (am.headers[HEADER], ah.headers[HEADER]) == ("miss", "exact")
    pairs.append((rid(am), rid(ah)))

    ids = list(dict.fromkeys(i for pair in pairs for i in pair))
    by_id = dict(zip(ids, rows_of(gw, *ids)))
    expected_saved = Decimal(0)
    for miss_id, hit_id in pairs:
        check_hit(by_id[miss_id], by_id[hit_id])
        expected_saved += Decimal(by_id[miss_id]["list_cost"])
    hits = len(pairs)
    feature_rows = gw.rows("feature = ?", (feature,))
    assert len(feature_rows) == len(ids) == hits + 4
    hit_rows = [r for r in feature_rows if r["cache_status"] == "exact"]
    assert len(hit_rows) == hits
    assert sum(Decimal(r["saved"]) for r in hit_rows) == expected_saved
    assert all(Decimal(r["saved"]) == 0 and r["saved_by"] is None for r in feature_rows if r["cache_status"] != "exact")

    # the report, from the CLI, equals the ledger to the last digit
    p = cli("report", "--ledger", f"sqlite:///{gw.ledger}", "--by", "feature,cache_status", "--format", "json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    all_rows = gw.rows()
    total = report["total"]
    for money in ("cost", "list_cost", "saved"):
        assert Decimal(total[money]) == sum((Decimal(r[money]) for r in all_rows), Decimal(0)), money
    assert total["requests"] == len(all_rows)
    assert total["cache_hits"] == sum(r["cache_status"] in ("exact", "semantic") for r in all_rows)
    mine = {r["cache_status"]: r for r in report["rows"] if r["feature"] == feature}
    assert set(mine) == {"miss", "exact"}
    assert mine["exact"]["cache_hits"] == hits and mine["exact"]["requests"] == hits
    assert Decimal(mine["exact"]["saved"]) == expected_saved and Decimal(mine["exact"]["cost"]) == 0
    assert mine["miss"]["cache_misses"] == 4 and mine["miss"]["cache_hits"] == 0
    assert Decimal(mine["miss"]["cost"]) == sum(Decimal(r["cost"]) for r in feature_rows if r["cache_status"] == "miss")
    for money in ("cost", "list_cost", "saved"):
        assert sum(Decimal(r[money]) for r in report["rows"]) == Decimal(total[money])

    # and so does build_report, over the same file
    from spendgate.analytics.report import build_report
    from spendgate.ledger.open import open_ledger

    store = open_ledger(f"sqlite:///{gw.ledger}")
    try:
        rep = build_report(store, by=["feature", "saved_by"])
    finally:
        store.close()
    [saved_row] = [r for r in rep.rows if r.group == {"feature": feature, "saved_by": "cache"}]
    assert (saved_row.saved, saved_row.cost, saved_row.cache_hits) == (expected_saved, 0, hits)
    assert rep.total.saved == sum((Decimal(r["saved"]) for r in all_rows), Decimal(0))


def test_no_prompt_text_in_hit_rows_or_in_the_cache_file(gw: Gateway) -> None:
    secret = f"zqx-secret-{uuid.uuid4().hex}"
    q = f"My account password hint is {secret}, what now?"
    first = chat(gw, q, out=20, tags="feature=privacy")
    answer = first.parse().choices[0].message.content
    hit = chat(gw, q, out=20, tags="feature=privacy")
    assert hit.headers[HEADER] == "exact"
    miss_row, hit_row = assert_miss_then_hit_rows(gw, rid(first), rid(hit))
    assert secret in miss_row["request_text"]  # store_text is on: only the upstream call keeps text
    for value in hit_row.values():
        assert secret not in str(value) and answer not in str(value)

    a = message(gw, f"Anthropic {q}", out=20)
    assert message(gw, f"Anthropic {q}", out=20).headers[HEADER] == "exact"
    a_answer = a.parse().content[0].text

    db = gw.ledger.parent / "cache.db"
    stored = wait_cache_rows(db, "feature IN ('privacy', 'chatbot')", count=2)
    assert stored, "entries are written behind to the cache file"
    bodies = b"".join(bytes(r["body"]) for r in stored)
    assert answer.encode() in bodies or json.dumps(answer).encode() in bodies  # the response is what a cache keeps
    assert json.dumps(a_answer)[1:-1].encode() in bodies or a_answer.encode() in bodies
    for r in cache_rows(db):
        for column, value in r.items():
            blob = bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
            assert secret.encode() not in blob, f"prompt text in cache_entries.{column}"
    for suffix in ("", "-wal"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            assert secret.encode() not in path.read_bytes(), f"prompt text in {path.name}"


# ---- persistence, budgets and rate limits -----------------------------------------------------------


def test_hits_spend_nothing_from_a_budget(gw: Gateway) -> None:
    q = uniq("Budgeted question.")
    first = chat(gw, q, key=BUDGETED, model="budget-llm", out=5, max_tokens=5)  # spends the whole budget
    assert first.headers[HEADER] == "miss"
    assert Decimal(row_of(gw, rid(first))["cost"]) == Decimal("0.0005")
    hit_ids = []
    for _ in range(5):
        r = chat(gw, q, key=BUDGETED, model="budget-llm", out=5, max_tokens=5)
        assert r.headers[HEADER] == "exact"
        assert r.parse().choices[0].message.content == first.parse().choices[0].message.content
        hit_ids.append(rid(r))
    [budget] = [b for b in admin(gw, "GET", "budgets").json()["data"] if b["name"] == "tiny"]
    assert (Decimal(budget["spent"]), Decimal(budget["reserved"])) == (Decimal("0.0005"), 0)
    with pytest.raises(openai.RateLimitError) as info:  # a miss still needs the budget
        chat(gw, uniq("Another budgeted question."), key=BUDGETED, model="budget-llm", out=5, max_tokens=5)
    assert "'tiny'" in info.value.response.json()["error"]["message"]
    r = chat(gw, q, key=BUDGETED, model="budget-llm", out=5, max_tokens=5)
    assert r.headers[HEADER] == "exact"  # hits go on after the refusal
    hit_ids.append(rid(r))
    for hit in rows_of(gw, *hit_ids):
        assert (Decimal(hit["cost"]), Decimal(hit["saved"])) == (0, Decimal("0.0005"))
    [budget] = [b for b in admin(gw, "GET", "budgets").json()["data"] if b["name"] == "tiny"]
    assert (Decimal(budget["spent"]), Decimal(budget["reserved"])) == (Decimal("0.0005"), 0)


def test_hits_do_not_count_against_rate_limits(gw: Gateway) -> None:
    q = uniq("Rate limited question.")
    assert chat(gw, q, key=LIMITED).headers[HEADER] == "miss"  # 1 of 2
    for _ in range(6):
        assert chat(gw, q, key=LIMITED).headers[HEADER] == "exact"
    assert message(gw, q, key=LIMITED).headers[HEADER] == "miss"  # 2 of 2
    for _ in range(3):
        assert message(gw, q, key=LIMITED).headers[HEADER] == "exact"
    with pytest.raises(openai.RateLimitError) as info:
        chat(gw, uniq("One miss too many."), key=LIMITED)
    assert info.value.response.headers["x-spendgate-ratelimit-name"] == "two-per-minute"
    assert info.value.response.headers[HEADER] == "miss"  # the cache stage ran before the limit refused
    assert chat(gw, q, key=LIMITED).headers[HEADER] == "exact"
    with pytest.raises(openai.RateLimitError):
        chat(gw, q, key=LIMITED, cache="bypass")  # a bypass is an ordinary call


# ---- semantic ---------------------------------------------------------------------------------------

QUESTION = "How do I reset my password?"
RESTATED = "how do i reset my password"  # the same question, written differently: not an exact hit
PARAPHRASE = "How should I reset my password?"
UNRELATED = "What is the capital of France?"
NEAR = "How do I reset my username?"  # close in words, another question


@pytest.fixture(scope="module")
def embedder() -> Any:
    """The gateway's own model and threshold (loaded in this process to know what to expect)."""
    from spendgate.cache.embedding import DEFAULT_THRESHOLD, load_embedder

    return load_embedder(), DEFAULT_THRESHOLD


def similarity(embedder: Any, a: str, b: str) -> float:
    model, _ = embedder
    va, vb = model.encode([a, b])
    return float(va @ vb)


def ask(g: Gateway, question: str, *, key: str = ACME, tags: str = "feature=sem", system: str | None = None, **kw: Any) -> Any:
    """A single-turn question with no simulator directive (it would be embedded with the question)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return oai(g, key).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages, temperature=0, extra_headers=headers(tags=tags), **{"max_tokens": 24, **kw}
    )


def test_semantic_hit_for_a_restated_question_within_the_tenant(gw: Gateway, embedder: Any) -> None:
    _, threshold = embedder
    system = f"You are the support bot of run {RUN}."
    first = ask(gw, QUESTION, system=system)
    assert first.headers[HEADER] == "miss"
    answer = first.parse().choices[0].message.content
    expected = similarity(embedder, QUESTION, RESTATED)
    assert expected >= threshold, "the model no longer treats a case/punctuation change as the same question"

    r = ask(gw, RESTATED, system=system)
    assert (r.headers[HEADER], r.headers["x-spendgate-cost"]) == ("semantic", "0")
    assert r.parse().choices[0].message.content == answer  # the stored answer, not a new one
    miss, hit = assert_miss_then_hit_rows(gw, rid(first), rid(r), status="semantic")
    assert hit["similarity"] is not None and threshold <= hit["similarity"] <= 1.0
    assert hit["similarity"] == pytest.approx(expected, abs=1e-4)
    assert hit["cache_scope"] == "tenant=acme"

    # a streaming client gets the same answer replayed
    with oai(gw).chat.completions.with_streaming_response.create(
        model="gpt-4o", temperature=0, max_tokens=24, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": system}, {"role": "user", "content": RESTATED + "!"}],
        extra_headers=headers(tags="feature=sem"),
    ) as resp:  # fmt: skip
        chunks = list(resp.parse())
    assert resp.headers[HEADER] == "semantic" and stream_text(chunks) == answer
    assert chunks[-1].usage.completion_tokens == first.parse().usage.completion_tokens

    # the default threshold decides for a true paraphrase, exactly as evaluated
    p = similarity(embedder, QUESTION, PARAPHRASE)
    assert ask(gw, PARAPHRASE, system=system).headers[HEADER] == ("semantic" if p >= threshold else "miss")
    # unrelated and near-but-different questions are answered upstream
    assert ask(gw, UNRELATED, system=system).headers[HEADER] == "miss"
    assert ask(gw, NEAR, system=system).headers[HEADER] == "miss"
    # everything but the question must be equal: another system prompt, model or parameter misses
    assert ask(gw, RESTATED, system=system + " Be brief.").headers[HEADER] == "miss"
    assert ask(gw, RESTATED, system=system, max_tokens=25).headers[HEADER] == "miss"

    status = admin(gw, "GET", "cache").json()
    assert status["semantic_entries"] >= 1 and status["semantic_partitions"] >= 1


def test_semantic_threshold_per_policy(gw: Gateway, embedder: Any) -> None:
    tags = "feature=sem-loose"
    system = f"Loose policy, run {RUN}."
    first = ask(gw, QUESTION, system=system, tags=tags)
    assert first.headers[HEADER] == "miss"
    p = similarity(embedder, QUESTION, PARAPHRASE)
    assert 0.95 <= p < 1.0, p
    r = ask(gw, PARAPHRASE, system=system, tags=tags)
    assert r.headers[HEADER] == "semantic"
    assert r.parse().choices[0].message.content == first.parse().choices[0].message.content
    _, hit = assert_miss_then_hit_rows(gw, rid(first), rid(r), status="semantic")
    assert 0.95 <= hit["similarity"] < 1.0
    assert similarity(embedder, QUESTION, NEAR) < 0.95
    assert ask(gw, NEAR, system=system, tags=tags).headers[HEADER] == "miss"


def test_semantic_matches_never_cross_tenants(gw: Gateway) -> None:
    system = f"Tenant isolation, run {RUN}."
    assert ask(gw, QUESTION, system=system, key=ACME).headers[HEADER] == "miss"
    assert ask(gw, RESTATED, system=system, key=ACME).headers[HEADER] == "semantic"
    g = ask(gw, RESTATED, system=system, key=GLOBEX)
    assert g.headers[HEADER] == "miss", "globex was served acme's answer by meaning"
    assert ask(gw, QUESTION, system=system, key=GLOBEX).headers[HEADER] == "semantic"  # its own entry
    assert ask(gw, QUESTION, system=system, key=ANON).headers[HEADER] == "bypass"
    assert row_of(gw, rid(g))["cache_scope"] == "tenant=globex"


def test_multi_turn_conversations_are_never_matched_by_meaning(gw: Gateway) -> None:
    def conversation(question: str, follow_up: str) -> Any:
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": "Open the settings page."},
            {"role": "user", "content": follow_up},
        ]
        return oai(gw).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=messages, temperature=0, max_tokens=24, extra_headers=headers(tags="feature=sem")
        )

    follow = f"And then what? ({RUN})"
    assert conversation(QUESTION, follow).headers[HEADER] == "miss"
    assert conversation(QUESTION, follow).headers[HEADER] == "exact"  # the same conversation: an exact hit
    assert conversation(RESTATED, follow).headers[HEADER] == "miss"
    assert conversation(QUESTION, follow.lower()).headers[HEADER] == "miss"


def test_semantic_hits_in_anthropic_format(gw: Gateway) -> None:
    system = f"Anthropic semantic, run {RUN}."

    def msg(question: str, key: str = ACME) -> Any:
        return ant(gw, key).messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=24, system=system, messages=[{"role": "user", "content": question}],
            extra_headers=headers(tags="feature=sem-anthropic"),
        )  # fmt: skip

    first = msg(QUESTION)
    assert first.headers[HEADER] == "miss"
    r = msg(RESTATED)
    assert r.headers[HEADER] == "semantic"
    assert r.parse().content[0].text == first.parse().content[0].text
    assert_miss_then_hit_rows(gw, rid(first), rid(r), status="semantic")
    assert msg(RESTATED, key=GLOBEX).headers[HEADER] == "miss"
    assert msg(UNRELATED).headers[HEADER] == "miss"


# ---- persistence (restarts the module's gateway in place, so it runs last) ------------------------------


def test_entries_survive_a_restart(gw: Gateway, simulator: str) -> None:
    q = uniq("What is the warranty period?")
    system = f"Restart, run {RUN}."
    first = chat(gw, q, out=25)
    a = message(gw, q, out=25)
    short_expires = time.time() + 1.05
    short = chat(gw, q, out=26, tags="feature=short-lived")  # (feature is not part of the key: another request)
    s = ask(gw, QUESTION, system=system)
    assert [r.headers[HEADER] for r in (first, a, short, s)] == ["miss"] * 4
    miss = row_of(gw, rid(first))
    entries = admin(gw, "GET", "cache").json()["entries"]

    out = gw.process.terminate()  # SIGTERM
    assert "Traceback" not in out, out
    db = gw.ledger.parent / "cache.db"
    assert len(cache_rows(db)) == entries  # what was pending was written on the way out
    time.sleep(max(0.0, short_expires - time.time()))  # the 1 s entry has expired by now
    again = start_gateway(gw.ledger.parent, cache_config(simulator, gw.ledger.parent), env={"SPENDGATE_ADMIN_KEY": ADMIN})
    gw.url, gw.process = again.url, again.process  # the fixture stops the new process

    r = chat(gw, q, out=25)
    assert r.headers[HEADER] == "exact"
    assert r.parse().choices[0].message.content == first.parse().choices[0].message.content
    hit = row_of(gw, rid(r))
    assert Decimal(hit["saved"]) == Decimal(miss["list_cost"]) and Decimal(hit["cost"]) == 0
    h, chunks = chat_stream(gw, q, out=25)
    assert h[HEADER] == "exact" and stream_text(chunks) == first.parse().choices[0].message.content
    b = message(gw, q, out=25)
    assert b.headers[HEADER] == "exact" and b.parse().content[0].text == a.parse().content[0].text
    # semantic entries come back with their vectors
    r = ask(gw, RESTATED, system=system)
    assert r.headers[HEADER] == "semantic"
    assert r.parse().choices[0].message.content == s.parse().choices[0].message.content
    # expired entries do not, and scopes hold as before
    assert chat(gw, q, out=26, tags="feature=short-lived").headers[HEADER] == "miss"
    assert chat(gw, q, key=GLOBEX, out=25).headers[HEADER] == "miss"
    assert ask(gw, RESTATED, system=system, key=GLOBEX).headers[HEADER] == "miss"
