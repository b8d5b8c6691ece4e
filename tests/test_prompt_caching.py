"""Provider prompt caching end to end: real SDKs → gateway → simulator, exact costs from the ledger.

Anthropic five-minute and one-hour cache writes and reads, natively and
through OpenAI-format translation, streamed and not; OpenAI and Gemini
`cached_tokens`; `saved`/`saved_by`; breakpoint insertion on, off and at its
limits.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from genai_prices import calc_price
from genai_prices.data_snapshot import get_snapshot

from conftest import Gateway, Process, base_config, free_port, start_gateway
from spendgate.analytics.report import build_report
from spendgate.config import PromptCacheConfig, TokenPrice, load_config, parse_config
from spendgate.controls.worst_case import input_tokens, worst_case
from spendgate.ledger.sqlite import SQLiteLedger
from spendgate.pipeline import Call
from spendgate.pricing.catalog import Catalog, TokenUsage, token_price_cost
from spendgate.pricing.listprices import DERIVED_1H, GenaiPrices, genai_usage
from spendgate.relay.breakpoints import breakpoint_changes, min_cacheable_tokens
from spendgate.wire.usage import from_anthropic, to_anthropic

M = Decimal(1_000_000)
# genai-prices list prices, USD per million tokens
SONNET_45 = {"in": Decimal("3"), "read": Decimal("0.3"), "w5m": Decimal("3.75"), "w1h": Decimal("6"), "out": Decimal("15")}
GPT_4O = {"in": Decimal("2.5"), "read": Decimal("1.25"), "out": Decimal("10")}
GEMINI_25_FLASH = {"in": Decimal("0.3"), "read": Decimal("0.03"), "out": Decimal("2.5")}

LONG = "You are a careful assistant for the finance team; answer from the ledger only. " * 120  # ~2,400 sim tokens
OTHER = "Reference table of cost centres, budgets, owners and approval limits follows. " * 80


@pytest.fixture(scope="module")
def pc_gateway(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("pc")
    cfg = base_config(simulator, tmp / "ledger.db")

    def sonnet(name: str, serves: str, **prompt_cache: Any) -> dict[str, Any]:
        return {"name": name, "provider": "anthropic", "model": "claude-sonnet-4-5", "serves": [serves], "base_url": simulator, "prompt_cache": prompt_cache}

    cfg["deployments"] += [
        sonnet("an-bp", "sonnet-bp", insert_breakpoints=True),
        sonnet("an-bp-1h", "sonnet-bp-1h", insert_breakpoints=True, ttl="1h"),
        sonnet("an-bp-min", "sonnet-bp-min", insert_breakpoints=True, min_tokens=50_000),
        {"name": "an-opus-bp", "provider": "anthropic", "model": "claude-opus-4-5", "serves": ["opus-bp"], "base_url": simulator, "prompt_cache": {"insert_breakpoints": True}},
    ]
    gw = start_gateway(tmp, cfg)
    yield gw
    gw.process.terminate()


def nonce() -> str:
    """Prefixes unique to one test run: the simulator's prompt cache lives as long as it does."""
    return f"[run {uuid.uuid4().hex}] "


def ant(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="sk-test-search", max_retries=0)


def oai(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.openai_base, api_key="sk-test-search", max_retries=0)


def messages_call(gw: Gateway, stream: bool, **kw: Any) -> tuple[anthropic.types.Message, str]:
    c = ant(gw)
    if stream:
        with c.messages.stream(max_tokens=50, **kw) as s:
            s.until_done()
            return s.get_final_message(), s.response.headers["x-spendgate-request-id"]
    raw = c.messages.with_raw_response.create(max_tokens=50, **kw)
    return raw.parse(), raw.headers["x-spendgate-request-id"]


def chat_call(gw: Gateway, stream: bool, **kw: Any) -> tuple[Any, str]:
    """An OpenAI-format call; returns its usage block and request id."""
    c = oai(gw)
    if stream:
        raw = c.chat.completions.with_raw_response.create(stream=True, stream_options={"include_usage": True}, **kw)
        chunks = list(raw.parse())
        return chunks[-1].usage, raw.headers["x-spendgate-request-id"]
    raw = c.chat.completions.with_raw_response.create(**kw)
    return raw.parse().usage, raw.headers["x-spendgate-request-id"]


def anthropic_cost(u: anthropic.types.Usage) -> tuple[Decimal, Decimal]:
    """(cost, cost without caching) of an Anthropic usage block at Sonnet 4.5 prices."""
    read = u.cache_read_input_tokens or 0
    w1h = u.cache_creation.ephemeral_1h_input_tokens if u.cache_creation else 0
    w5m = (u.cache_creation_input_tokens or 0) - w1h
    cost = (u.input_tokens * SONNET_45["in"] + read * SONNET_45["read"] + w5m * SONNET_45["w5m"] + w1h * SONNET_45["w1h"] + u.output_tokens * SONNET_45["out"]) / M
    uncached = ((u.input_tokens + read + w5m + w1h) * SONNET_45["in"] + u.output_tokens * SONNET_45["out"]) / M
    return cost, uncached


def row_cost(row: dict[str, Any], prices: dict[str, Decimal]) -> tuple[Decimal, Decimal]:
    """(cost, cost without caching) from a ledger row's token columns."""
    read, write, w1h = row["cache_read_tokens"], row["cache_write_tokens"], row["cache_write_1h_tokens"]
    plain = row["input_tokens"] - read - write
    cost = plain * prices["in"] + read * prices["read"] + row["output_tokens"] * prices["out"]
    if write:
        cost += (write - w1h) * prices["w5m"] + w1h * prices["w1h"]
    uncached = row["input_tokens"] * prices["in"] + row["output_tokens"] * prices["out"]
    return cost / M, uncached / M


# ---- Anthropic: five-minute and one-hour writes, reads ------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_anthropic_1h_and_5m_writes_then_reads_priced_exactly(pc_gateway: Gateway, stream: bool) -> None:
    system = [
        {"type": "text", "text": nonce() + LONG, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": OTHER, "cache_control": {"type": "ephemeral"}},
    ]
    kw = {"model": "claude-sonnet-4-5", "system": system, "messages": [{"role": "user", "content": "Hi [[sim:output_tokens=12]]"}]}
    m1, rid1 = messages_call(pc_gateway, stream, **kw)
    m2, rid2 = messages_call(pc_gateway, stream, **kw)
    u1, u2 = m1.usage, m2.usage
    assert u1.cache_creation is not None and u1.cache_creation.ephemeral_1h_input_tokens > 2000
    assert u1.cache_creation.ephemeral_5m_input_tokens > 1000
    assert u1.cache_creation_input_tokens == u1.cache_creation.ephemeral_1h_input_tokens + u1.cache_creation.ephemeral_5m_input_tokens
    assert u2.cache_read_input_tokens == u1.cache_creation_input_tokens and u2.cache_creation_input_tokens == 0

    rows = []
    for rid, u in ((rid1, u1), (rid2, u2)):
        [row] = pc_gateway.by_request(rid)
        cost, uncached = anthropic_cost(u)
        assert Decimal(row["cost"]) == cost
        assert row["price_source"] == "genai-prices:anthropic/claude-sonnet-4-5"
        assert row["cache_write_tokens"] == (u.cache_creation_input_tokens or 0)
        assert row["cache_write_1h_tokens"] == (u.cache_creation.ephemeral_1h_input_tokens if u.cache_creation else 0)
        assert row["cache_read_tokens"] == (u.cache_read_input_tokens or 0)
        assert Decimal(row["saved"]) == uncached - cost and row["saved_by"] == "prompt_cache"
        rows.append(row)
    # the write costs more than no caching (saved < 0); the read saves
    assert Decimal(rows[0]["saved"]) < 0 < Decimal(rows[1]["saved"])
    # one-hour writes are billed at 2x input, not at the five-minute 1.25x (the old gap)
    r = rows[0]
    all_5m = TokenUsage(r["input_tokens"], r["output_tokens"], r["cache_read_tokens"], r["cache_write_tokens"])
    as_if_5m = Catalog(parse_config("")).price("anthropic", "claude-sonnet-4-5", all_5m).cost
    assert Decimal(r["cost"]) - as_if_5m == r["cache_write_1h_tokens"] * (SONNET_45["w1h"] - SONNET_45["w5m"]) / M > 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_openai_client_on_anthropic_gets_1h_breakpoint_and_exact_cost(pc_gateway: Gateway, stream: bool) -> None:
    """OpenAI format cannot carry cache_control: the inserted breakpoint (ttl 1h) is the only
    way such a client gets Anthropic caching; the translated answer's usage is priced exactly."""
    messages = [{"role": "system", "content": nonce() + LONG}, {"role": "user", "content": "Hi [[sim:output_tokens=9]]"}]
    u1, rid1 = chat_call(pc_gateway, stream, model="sonnet-bp-1h", messages=messages)
    u2, rid2 = chat_call(pc_gateway, stream, model="sonnet-bp-1h", messages=messages)
    [r1] = pc_gateway.by_request(rid1)
    [r2] = pc_gateway.by_request(rid2)
    assert r1["control_actions"] == r2["control_actions"] == "prompt_cache:breakpoints=1:1h"
    assert r1["cache_write_tokens"] > 2000 and r1["cache_write_1h_tokens"] == r1["cache_write_tokens"]
    assert r2["cache_read_tokens"] == r1["cache_write_tokens"] and r2["cache_write_tokens"] == 0
    for u, row in ((u1, r1), (u2, r2)):
        assert (u.prompt_tokens, u.completion_tokens) == (row["input_tokens"], row["output_tokens"])
        assert u.prompt_tokens_details.cached_tokens == row["cache_read_tokens"]
        cost, uncached = row_cost(row, SONNET_45)
        assert Decimal(row["cost"]) == cost
        assert Decimal(row["saved"]) == uncached - cost and row["saved_by"] == "prompt_cache"
    assert Decimal(r1["saved"]) < 0 < Decimal(r2["saved"])


# ---- OpenAI and Gemini cached_tokens ---------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "prices", "source"),
    [
        ("gpt-4o", GPT_4O, "genai-prices:openai/gpt-4o"),
        ("gemini-2.5-flash", GEMINI_25_FLASH, "genai-prices:google/gemini-2.5-flash"),  # its OpenAI-compatible API
    ],
    ids=["openai", "gemini"],
)
def test_cached_tokens_priced_as_billed_with_saving(pc_gateway: Gateway, model: str, prices: dict[str, Decimal], source: str) -> None:
    messages = [{"role": "system", "content": nonce() + LONG}, {"role": "user", "content": "Hi [[sim:output_tokens=10]]"}]
    _, rid1 = chat_call(pc_gateway, False, model=model, messages=messages)
    u2, rid2 = chat_call(pc_gateway, True, model=model, messages=messages)
    [r1] = pc_gateway.by_request(rid1)
    [r2] = pc_gateway.by_request(rid2)
    assert r1["cache_read_tokens"] == 0 and r1["saved_by"] is None and Decimal(r1["saved"]) == 0
    cached = u2.prompt_tokens_details.cached_tokens
    assert cached >= 1024 and r2["cache_read_tokens"] == cached and r2["cache_write_tokens"] == 0
    expected = ((u2.prompt_tokens - cached) * prices["in"] + cached * prices["read"] + u2.completion_tokens * prices["out"]) / M
    uncached = (u2.prompt_tokens * prices["in"] + u2.completion_tokens * prices["out"]) / M
    assert Decimal(r2["cost"]) == expected and r2["price_source"] == source
    assert Decimal(r2["saved"]) == uncached - expected > 0 and r2["saved_by"] == "prompt_cache"


# ---- breakpoint insertion ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_breakpoints_inserted_on_tools_and_system_for_anthropic_client(pc_gateway: Gateway, stream: bool) -> None:
    tools = [{"name": f"lookup_{i}", "description": "Look up a ledger entry. " * 60, "input_schema": {"type": "object", "properties": {"id": {"type": "string"}}}} for i in range(3)]
    kw = {"model": "sonnet-bp", "tools": tools, "tool_choice": {"type": "none"}, "system": nonce() + LONG, "messages": [{"role": "user", "content": "Hi [[sim:output_tokens=5]]"}]}
    m1, rid1 = messages_call(pc_gateway, stream, **kw)
    m2, rid2 = messages_call(pc_gateway, stream, **kw)
    [r1] = pc_gateway.by_request(rid1)
    [r2] = pc_gateway.by_request(rid2)
    assert r1["control_actions"] == "prompt_cache:breakpoints=2"
    # tools + system are cached: everything but the user turn is written (or, for the tools,
    # read: the other variant of this test wrote the same tools before), then read
    u1, u2 = m1.usage, m2.usage
    assert u1.cache_creation_input_tokens > 2000 and u1.cache_creation_input_tokens + u1.cache_read_input_tokens > 2500
    assert u1.input_tokens < 30 and u1.cache_creation.ephemeral_1h_input_tokens == 0
    assert u2.cache_read_input_tokens == u1.cache_creation_input_tokens + u1.cache_read_input_tokens
    for m, row in ((m1, r1), (m2, r2)):
        cost, uncached = anthropic_cost(m.usage)
        assert Decimal(row["cost"]) == cost and Decimal(row["saved"]) == uncached - cost


def test_breakpoints_off_by_default(pc_gateway: Gateway) -> None:
    kw = {"model": "claude-sonnet-4-5", "system": nonce() + LONG, "messages": [{"role": "user", "content": "Hi [[sim:output_tokens=5]]"}]}
    for _ in range(2):
        m, rid = messages_call(pc_gateway, False, **kw)
        [row] = pc_gateway.by_request(rid)
        assert row["control_actions"] is None
        assert m.usage.cache_creation_input_tokens == m.usage.cache_read_input_tokens == 0
        assert row["saved_by"] is None and Decimal(row["saved"]) == 0


def test_breakpoints_never_touch_a_request_that_sets_cache_control(pc_gateway: Gateway) -> None:
    """The client's own breakpoint (on the first system block) stays the only one: the long
    second block is not written to the cache, as it would be had spendgate marked it."""
    system = [
        {"type": "text", "text": nonce() + LONG, "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": OTHER},
    ]
    m, rid = messages_call(pc_gateway, False, model="sonnet-bp", system=system, messages=[{"role": "user", "content": "Hi [[sim:output_tokens=5]]"}])
    [row] = pc_gateway.by_request(rid)
    assert row["control_actions"] is None
    assert m.usage.cache_creation_input_tokens > 2000 and m.usage.input_tokens > len(OTHER) // 4 - 10


def test_breakpoints_respect_the_models_minimum(pc_gateway: Gateway) -> None:
    system = nonce() + "Answer briefly and cite the ledger row. " * 60  # ~2,500 bytes, ~620 tokens
    msgs = [{"role": "user", "content": "Hi [[sim:output_tokens=5]]"}]
    # Opus 4.5 caches from 4,096 tokens: not even the upper bound of this prefix reaches it
    _, rid = messages_call(pc_gateway, False, model="opus-bp", system=system, messages=msgs)
    assert pc_gateway.by_request(rid)[0]["control_actions"] is None
    # a configured minimum wins over the model's
    _, rid = messages_call(pc_gateway, False, model="sonnet-bp-min", system=nonce() + LONG, messages=msgs)
    assert pc_gateway.by_request(rid)[0]["control_actions"] is None
    # Sonnet 4.5 caches from 1,024: the bound may reach it, so it is marked; the provider
    # finds it shorter and caches nothing, at no charge (cost = plain input)
    m, rid = messages_call(pc_gateway, False, model="sonnet-bp", system=system, messages=msgs)
    [row] = pc_gateway.by_request(rid)
    assert row["control_actions"] == "prompt_cache:breakpoints=1"
    assert m.usage.cache_creation_input_tokens == 0 and row["saved_by"] is None
    # too short even for the bound: untouched
    _, rid = messages_call(pc_gateway, False, model="sonnet-bp", system="Be brief.", messages=msgs)
    assert pc_gateway.by_request(rid)[0]["control_actions"] is None


def test_report_sums_prompt_cache_savings_exactly(pc_gateway: Gateway) -> None:
    rows = pc_gateway.wait_rows("saved_by = 'prompt_cache'", count=1)
    assert rows
    with SQLiteLedger(pc_gateway.ledger) as store:
        report = build_report(store, by=["saved_by"])
    [pc] = [r for r in report.rows if r.group["saved_by"] == "prompt_cache"]
    every = pc_gateway.rows("saved_by = 'prompt_cache'")
    total = Decimal(0)
    for r in every:
        total += Decimal(r["saved"])
    assert pc.saved == total and pc.requests == len(every)


def test_prompt_caching_example_config_parses_and_is_quoted_in_the_docs() -> None:
    root = Path(__file__).resolve().parent.parent
    example = root / "examples" / "prompt_caching.yaml"
    cfg, _ = load_config(example)
    doc = (root / "docs" / "prompt-caching.md").read_text()
    quoted = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert quoted in example.read_text()
    by_name = {d.name: d for d in cfg.deployments}
    assert cfg.prompt_cache.insert_breakpoints
    assert any(d.prompt_cache is not None and d.prompt_cache.ttl == "1h" for d in by_name.values())


# ---- units: pricing, usage parsing, breakpoints, worst case ------------------------------------


def test_one_hour_writes_equal_genai_prices_for_every_model_that_prices_them() -> None:
    fast, rng, checked = GenaiPrices(), random.Random(4), 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for provider in get_snapshot().providers:
            for model in provider.models:
                if "cache_write_1h_mtok" not in repr(model.prices):
                    continue
                for _ in range(5):
                    inp = rng.choice([5_000, rng.randint(1, 400_000), 200_001])
                    write = rng.randint(1, inp)
                    u = TokenUsage(inp, rng.randint(0, 5_000), rng.randint(0, inp - write), write, 0, rng.randint(1, write))
                    try:
                        ref = calc_price(genai_usage(u), model.id, provider_id=provider.id).total_price
                    except LookupError:  # an id genai-prices does not resolve to itself
                        continue
                    got = fast.price(provider.id, model.id, u)
                    assert got is not None and got.total == ref and DERIVED_1H not in got.source, (provider.id, model.id, u)
                    checked += 1
    assert checked > 100


def test_one_hour_writes_without_a_catalog_price_are_2x_input() -> None:
    cat = Catalog(parse_config(""))
    u = TokenUsage(input_tokens=10_000, output_tokens=100, cache_read_tokens=1_000, cache_write_tokens=6_000, cache_write_1h_tokens=4_000)
    # claude-3-opus on Vertex (genai-prices: input 15, write 18.75, read 1.5, no 1h price)
    p = cat.price("google", "claude-3-opus", u)
    assert p.cost == (3_000 * Decimal(15) + 1_000 * Decimal("1.5") + 2_000 * Decimal("18.75") + 4_000 * Decimal(30) + 100 * Decimal(75)) / M
    assert p.source == "genai-prices:google/claude-3-opus" + DERIVED_1H
    # the same model without one-hour writes keeps the plain catalog source and price
    five = cat.price("google", "claude-3-opus", TokenUsage(10_000, 100, 1_000, 6_000))
    assert five.source == "genai-prices:google/claude-3-opus"
    assert five.cost == calc_price(genai_usage(TokenUsage(10_000, 100, 1_000, 6_000)), "claude-3-opus", provider_id="google").total_price


def test_per_token_price_one_hour_writes() -> None:
    u = TokenUsage(input_tokens=1_000, output_tokens=10, cache_write_tokens=600, cache_write_1h_tokens=400)
    base = TokenPrice(input_per_mtok=Decimal(1), output_per_mtok=Decimal(2), cache_write_per_mtok=Decimal("1.25"))
    assert token_price_cost(base, u) == (400 * 1 + 200 * Decimal("1.25") + 400 * Decimal("1.25") + 10 * 2) / M
    explicit = base.model_copy(update={"cache_write_1h_per_mtok": Decimal(2)})
    assert token_price_cost(explicit, u) == (400 * 1 + 200 * Decimal("1.25") + 400 * 2 + 10 * 2) / M


def test_anthropic_usage_split_by_ttl_round_trips() -> None:
    wire = {
        "input_tokens": 10,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 300,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
        "output_tokens": 5,
    }
    u = from_anthropic(wire)
    assert u == TokenUsage(input_tokens=410, output_tokens=5, cache_read_tokens=100, cache_write_tokens=300, cache_write_1h_tokens=200)
    assert from_anthropic(to_anthropic(u)) == u
    assert to_anthropic(u)["cache_creation"] == wire["cache_creation"]
    # older responses without the split: all five-minute; a split larger than the total is clamped
    assert from_anthropic({**wire, "cache_creation": None}).cache_write_1h_tokens == 0
    assert from_anthropic({**wire, "cache_creation": {"ephemeral_1h_input_tokens": 999}}).cache_write_1h_tokens == 300
    assert "cache_creation" not in to_anthropic(TokenUsage(10, 1, 0, 5))


BIG = "Static instructions for every call of this feature. " * 100  # 5,300 bytes
ON = PromptCacheConfig(insert_breakpoints=True)


def test_breakpoint_changes_mark_last_tool_and_last_system_block() -> None:
    tools = [{"name": "a", "input_schema": {"type": "object"}}, {"name": "b", "description": BIG, "input_schema": {"type": "object"}}]
    body = {"model": "m", "tools": tools, "system": [{"type": "text", "text": "intro"}, {"type": "text", "text": BIG}], "messages": [{"role": "user", "content": "hi"}]}
    before = orjson.dumps(body)
    changes = breakpoint_changes(body, "claude-sonnet-4-5", ON)
    assert orjson.dumps(body) == before  # the client's body is never mutated
    assert set(changes) == {"tools", "system"}
    assert changes["tools"][0] == tools[0] and changes["tools"][1] == {**tools[1], "cache_control": {"type": "ephemeral"}}
    assert changes["system"][0] == {"type": "text", "text": "intro"}
    assert changes["system"][1]["cache_control"] == {"type": "ephemeral"}
    # a string system prompt becomes one text block; one-hour TTL when configured
    one_hour = breakpoint_changes({"system": BIG, "messages": []}, "claude-sonnet-4-5", PromptCacheConfig(insert_breakpoints=True, ttl="1h"))
    assert one_hour == {"system": [{"type": "text", "text": BIG, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}
    # short tools but a long system: only the system block (its prefix includes the tools)
    only_system = breakpoint_changes({"tools": tools[:1], "system": BIG}, "claude-sonnet-4-5", ON)
    assert set(only_system) == {"system"}


@pytest.mark.parametrize(
    "body",
    [
        {"cache_control": {"type": "ephemeral"}, "system": BIG},  # automatic caching, top level
        {"system": BIG, "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]},
        {"system": BIG, "tools": [{"name": "t", "input_schema": {}, "cache_control": {"type": "ephemeral"}}]},
        {"system": [{"type": "text", "text": BIG, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
    ],
    ids=["top-level", "message-block", "tool", "system"],
)
def test_breakpoint_changes_never_touch_a_request_with_cache_control(body: dict[str, Any]) -> None:
    assert breakpoint_changes(body, "claude-sonnet-4-5", ON) == {}


def test_breakpoint_minimums_per_model() -> None:
    assert [min_cacheable_tokens(m) for m in ("claude-sonnet-4-5-20250929", "claude-opus-4-1", "claude-sonnet-4.6", "claude-3-7-sonnet-latest")] == [1024] * 4
    assert [min_cacheable_tokens(m) for m in ("claude-opus-4-5", "claude-opus-4-6", "claude-haiku-4-5-20251001")] == [4096] * 3
    assert [min_cacheable_tokens(m) for m in ("claude-3-5-haiku-latest", "claude-3-haiku-20240307")] == [2048] * 2
    body = {"system": "x" * 2_000}  # bound ≈ 2,027 tokens
    assert breakpoint_changes(body, "claude-sonnet-4-5", ON) and not breakpoint_changes(body, "claude-haiku-4-5", ON)
    assert not breakpoint_changes(body, "claude-sonnet-4-5", PromptCacheConfig(insert_breakpoints=True, min_tokens=3000))


def test_worst_case_reserves_one_hour_writes() -> None:
    cfg = parse_config(
        """
deployments:
  - {name: plain, provider: anthropic, model: claude-sonnet-4-5, base_url: simulator}
  - {name: bp-5m, provider: anthropic, model: claude-sonnet-4-5, base_url: simulator, prompt_cache: {insert_breakpoints: true}}
  - {name: bp-1h, provider: anthropic, model: claude-sonnet-4-5, base_url: simulator, prompt_cache: {insert_breakpoints: true, ttl: 1h}}
"""
    )
    cat, deps = Catalog(cfg), {d.name: d for d in cfg.deployments}

    def call_with(system: Any) -> Call:
        body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "system": system, "messages": [{"role": "user", "content": "hi"}]}
        return Call(wire="anthropic", endpoint="messages", body=body, raw_body=orjson.dumps(body), headers={}, model="claude-sonnet-4-5")

    def reserve(dep: str, system: Any) -> Decimal:
        call = call_with(system)
        call.candidates = [deps[dep]]
        cost = worst_case(call, cat)
        assert cost is not None
        return cost

    n = input_tokens(call_with(BIG))

    def priced(**kw: int) -> Decimal:
        return cat.price("anthropic", "claude-sonnet-4-5", TokenUsage(input_tokens=n, output_tokens=10, **kw)).cost

    assert reserve("plain", BIG) == priced()
    assert reserve("bp-5m", BIG) == priced(cache_write_tokens=n)
    assert reserve("bp-1h", BIG) == priced(cache_write_tokens=n, cache_write_1h_tokens=n)
    marked_1h = [{"type": "text", "text": BIG, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    assert reserve("plain", marked_1h) == priced(cache_write_tokens=n, cache_write_1h_tokens=n) > priced(cache_write_tokens=n)


# ---- the simulator's wire shapes ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_simulator_reports_cache_creation_by_ttl(simulator: str, stream: bool) -> None:
    """Anthropic's shapes: `usage.cache_creation.{ephemeral_5m,ephemeral_1h}_input_tokens`
    in the message (JSON) or in `message_start` (SSE); the 1h part is the prefix up to the
    last one-hour breakpoint."""
    system = [
        {"type": "text", "text": nonce() + LONG, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": OTHER, "cache_control": {"type": "ephemeral"}},
    ]
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5, "stream": stream, "system": system, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}

    def usage() -> dict[str, Any]:
        r = httpx.post(f"{simulator}/v1/messages", json=body, headers=headers, timeout=10)
        assert r.status_code == 200
        if not stream:
            return r.json()["usage"]
        event, data = r.text.split("\n\n")[0].split("\n")
        assert event == "event: message_start"
        return orjson.loads(data.removeprefix("data: "))["message"]["usage"]

    first, second = usage(), usage()
    c = first["cache_creation"]
    assert set(c) == {"ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"}
    assert c["ephemeral_1h_input_tokens"] > 2000 and c["ephemeral_5m_input_tokens"] > 1000
    assert first["cache_creation_input_tokens"] == c["ephemeral_1h_input_tokens"] + c["ephemeral_5m_input_tokens"]
    assert first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}


def test_prompt_caching_example_runs_with_embedded_simulator(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    port = free_port()
    p = Process(["serve", "--config", str(root / "examples" / "prompt_caching.yaml"), "--port", str(port)], f"http://127.0.0.1:{port}/healthz", cwd=str(tmp_path))
    try:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-any", max_retries=0)
        messages = [{"role": "system", "content": nonce() + LONG}, {"role": "user", "content": "hi"}]
        for model in ("claude-sonnet-4-5", "claude-sonnet-4-5", "sonnet-long-lived", "claude-haiku-4-5"):
            c.chat.completions.create(model=model, messages=messages)
    finally:
        p.terminate()
    rows = sqlite3.connect(tmp_path / "spendgate.db").execute(
        "SELECT deployment, control_actions, cache_write_tokens, cache_write_1h_tokens, cache_read_tokens, saved_by FROM usage_events ORDER BY ts_start"
    ).fetchall()
    (d1, a1, w1, h1, _, s1), (_, a2, w2, _, r2, s2), (d3, a3, _, _, r3, _), (d4, a4, w4, _, r4, s4) = rows
    assert (d1, a1, h1, s1) == ("sonnet", "prompt_cache:breakpoints=1", 0, "prompt_cache") and w1 > 2000
    assert (a2, w2, r2, s2) == ("prompt_cache:breakpoints=1", 0, w1, "prompt_cache")
    # the 1h deployment shares the model's cache, so the 5-minute entry is read: no new write
    assert (d3, a3, r3) == ("sonnet-1h", "prompt_cache:breakpoints=1:1h", w1)
    assert (d4, a4, w4, r4, s4) == ("haiku", None, 0, 0, None)
