"""The response cache's core: keys, policies, scopes, lifetimes, invalidation, persistence.

The scope property: whatever mix of tenants, questions and policies, a
lookup never returns an entry stored under another scope (exact or semantic).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendgate.cache import keys
from spendgate.cache.memory import MemoryCache
from spendgate.cache.schema import CacheConfig, CachePolicy
from spendgate.cache.sqlite import SqlitePersistence
from spendgate.cache.stage import CacheStage
from spendgate.cache.store import Invalidation
from spendgate.errors import GatewayError
from spendgate.pipeline import Call


class ExactIndex:
    """A brute-force index, so these tests do not depend on the ANN library."""

    def __init__(self, dims: int) -> None:
        self.rows: dict[int, np.ndarray] = {}

    def add(self, key: int, vector: np.ndarray) -> None:
        self.rows[key] = vector

    def remove(self, key: int) -> None:
        self.rows.pop(key, None)

    def search(self, vector: np.ndarray, k: int = 4) -> list[tuple[int, float]]:
        scored = sorted(((float(v @ vector), key) for key, v in self.rows.items()), reverse=True)
        return [(key, s) for s, key in scored[:k]]

    def __len__(self) -> int:
        return len(self.rows)


WORDS = ["refund", "invoice", "password", "shipping", "cancel", "order", "account", "delivery"]


def toy_embed(text: str) -> np.ndarray:
    """Bag of known words, normalised: questions with the same words are identical (similarity 1)."""
    v = np.array([text.lower().count(w) for w in WORDS], dtype=np.float32) + 1e-3
    return v / np.linalg.norm(v)


def make_call(question: str = "How do I get a refund?", tags: dict[str, str] | None = None, *, temperature: float | None = 0,
              model: str = "gpt-4o-mini", headers: dict[str, str] | None = None, system: str | None = None) -> Call:  # fmt: skip
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    body: dict = {"model": model, "messages": messages}
    if temperature is not None:
        body["temperature"] = temperature
    call = Call(wire="openai", endpoint="chat.completions", body=body, raw_body=orjson.dumps(body), headers=headers or {}, model=model)
    call.tags = dict(tags if tags is not None else {"tenant": "acme", "feature": "faq"})
    return call


def stage_with(*policies: CachePolicy, clock=lambda: 1000.0, threshold: float = 0.95) -> tuple[CacheStage, MemoryCache]:
    cache = MemoryCache(index_factory=ExactIndex)
    return CacheStage(CacheConfig(url="memory", policies=list(policies)), cache, toy_embed, threshold, clock), cache


def faq(**kw) -> CachePolicy:
    return CachePolicy(**{"name": "faq", "match": {"feature": "faq"}, "scope": {"tenant": "*"}, "semantic": True, **kw})


async def lookup(stage: CacheStage, call: Call) -> str:
    await stage(call)
    return call.cache_status


def store(stage: CacheStage, call: Call, answer: str, list_cost: str = "0.002") -> None:
    stage.remember(call, orjson.dumps({"answer": answer}), cost=Decimal(list_cost), list_cost=Decimal(list_cost),
                   input_tokens=10, output_tokens=5, provider="openai", deployment="d", model_used=call.model)  # fmt: skip


async def answer_of(stage: CacheStage, call: Call) -> str | None:
    await stage(call)
    return None if call.cache_hit is None else orjson.loads(call.cache_hit.entry.body)["answer"]


# ---- keys ------------------------------------------------------------------------------------


def test_exact_key_ignores_who_asks_and_how_it_is_delivered_but_not_what_changes_the_answer() -> None:
    base = make_call()
    same = make_call()
    same.body.update(user="someone-else", metadata={"x": "y"}, stream=True, stream_options={"include_usage": True})
    assert keys.exact_key(base, "tenant=acme", "faq") == keys.exact_key(same, "tenant=acme", "faq")
    for change in ({"max_tokens": 5}, {"temperature": 0.5}, {"tools": [{"type": "function", "function": {"name": "f"}}]}, {"n": 2}):
        other = make_call()
        other.body.update(change)
        assert keys.exact_key(other, "tenant=acme", "faq") != keys.exact_key(base, "tenant=acme", "faq"), change
    assert keys.exact_key(make_call(model="gpt-4o"), "tenant=acme", "faq") != keys.exact_key(base, "tenant=acme", "faq")
    assert keys.exact_key(base, "tenant=other", "faq") != keys.exact_key(base, "tenant=acme", "faq")
    versioned = make_call(tags={"tenant": "acme", "feature": "faq", "prompt_version": "v2"})
    assert keys.exact_key(versioned, "tenant=acme", "faq") != keys.exact_key(base, "tenant=acme", "faq")


def test_only_single_turn_text_questions_are_matched_by_meaning() -> None:
    assert keys.question(make_call("What is my order status?", system="You help.")) == "What is my order status?"
    multi = make_call()
    multi.body["messages"] += [{"role": "assistant", "content": "Sure."}, {"role": "user", "content": "And then?"}]
    assert keys.question(multi) is None
    media = make_call()
    media.body["messages"][0]["content"] = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert keys.question(media) is None
    # a different system prompt is a different partition: its answers are not shared
    assert keys.semantic_partition(make_call(system="A"), "s", "faq") != keys.semantic_partition(make_call(system="B"), "s", "faq")
    assert keys.semantic_partition(make_call("q1", system="A"), "s", "faq") == keys.semantic_partition(make_call("q2", system="A"), "s", "faq")


# ---- the stage -----------------------------------------------------------------------------------


async def test_exact_then_semantic_hits_within_the_tenant() -> None:
    stage, _ = stage_with(faq())
    first = make_call("How do I get a refund?")
    assert await lookup(stage, first) == "miss"
    store(stage, first, "Refunds take 5 days.")
    again = make_call("How do I get a refund?")
    assert await answer_of(stage, again) == "Refunds take 5 days." and again.cache_status == "exact"
    reworded = make_call("refund: how do I get one")
    assert await answer_of(stage, reworded) == "Refunds take 5 days."
    assert reworded.cache_status == "semantic" and reworded.cache_hit.similarity >= 0.95
    unrelated = make_call("How do I reset my password?")
    assert await answer_of(stage, unrelated) is None and unrelated.cache_status == "miss"
    other_tenant = make_call("How do I get a refund?", tags={"tenant": "globex", "feature": "faq"})
    assert await answer_of(stage, other_tenant) is None and other_tenant.cache_scope == "tenant=globex"


async def test_a_match_by_meaning_must_agree_on_numbers_and_negation() -> None:
    """Averaged embeddings barely move for "order 12345" vs "order 67890", or "cancel"
    vs "not cancel" (the toy embedding does not move at all): the guard refuses those."""
    stage, _ = stage_with(faq())
    for q, a in (("Where is my order 12345?", "order 12345 ships today"), ("How do I cancel my account?", "how to cancel")):
        c = make_call(q)
        await stage(c)
        store(stage, c, a)
    assert await answer_of(stage, make_call("Where is my order 67890?")) is None
    assert await answer_of(stage, make_call("my order 12345: where is it?")) == "order 12345 ships today"
    assert await answer_of(stage, make_call("How do I not cancel my account?")) is None
    assert await answer_of(stage, make_call("How don't I cancel my account?")) is None
    assert await answer_of(stage, make_call("cancel my account - how do I?")) == "how to cancel"


async def test_calls_without_their_boundary_value_or_policy_are_never_cached() -> None:
    stage, cache = stage_with(faq())
    no_tenant = make_call(tags={"feature": "faq"})
    assert await lookup(stage, no_tenant) == "bypass" and no_tenant.cache_plan is None
    other_feature = make_call(tags={"tenant": "acme", "feature": "chat"})
    assert await lookup(stage, other_feature) == "bypass"
    assert (b"x-spendgate-cache", b"bypass") in other_feature.response_headers
    assert cache.stats().entries == 0


async def test_nondeterministic_requests_need_an_opt_in() -> None:
    stage, _ = stage_with(faq())
    assert await lookup(stage, make_call(temperature=0.7)) == "bypass"
    assert await lookup(stage, make_call(temperature=None)) == "bypass"  # the provider's default is 1
    assert await lookup(stage, make_call(temperature=0.7, headers={"x-spendgate-cache": "use"})) == "miss"
    opted, _ = stage_with(faq(nondeterministic=True))
    assert await lookup(opted, make_call(temperature=0.7)) == "miss"


async def test_bypass_and_refresh_headers() -> None:
    stage, _ = stage_with(faq())
    first = make_call()
    await stage(first)
    store(stage, first, "old")
    bypass = make_call(headers={"x-spendgate-cache": "bypass"})
    assert await answer_of(stage, bypass) is None and bypass.cache_status == "bypass" and bypass.cache_plan is None
    refresh = make_call(headers={"x-spendgate-cache": "refresh"})
    assert await answer_of(stage, refresh) is None and refresh.cache_status == "miss"
    store(stage, refresh, "new")
    assert await answer_of(stage, make_call()) == "new"
    with pytest.raises(GatewayError) as err:
        await stage(make_call(headers={"x-spendgate-cache": "sometimes"}))
    assert err.value.status == 400


async def test_ttl_per_template_and_expiry() -> None:
    now = [1000.0]
    stage, cache = stage_with(faq(ttl="10m", ttl_by_template={"pricing": "30s"}), clock=lambda: now[0])
    long = make_call("refund?", tags={"tenant": "acme", "feature": "faq"})
    short = make_call("refund?", tags={"tenant": "acme", "feature": "faq", "prompt_template": "pricing"})
    for c, a in ((long, "long"), (short, "short")):
        await stage(c)
        store(stage, c, a)
    now[0] += 31
    assert await answer_of(stage, make_call("refund?", tags={"tenant": "acme", "feature": "faq", "prompt_template": "pricing"})) is None
    assert await answer_of(stage, make_call("refund?")) == "long"
    now[0] += 600
    assert await answer_of(stage, make_call("refund?")) is None
    assert cache.expire(now[0]) == 0 and cache.stats().entries == 0  # dropped as they were found expired


async def test_a_new_prompt_version_never_hits_an_old_answer_and_flushes_select() -> None:
    stage, cache = stage_with(faq())
    v1 = {"tenant": "acme", "feature": "faq", "prompt_template": "support", "prompt_version": "v1"}
    c = make_call("refund?", tags=v1)
    await stage(c)
    store(stage, c, "v1 answer")
    v2 = make_call("refund?", tags={**v1, "prompt_version": "v2"})
    assert await answer_of(stage, v2) is None  # exact and semantic: another partition
    store(stage, v2, "v2 answer")
    assert cache.invalidate(Invalidation()) == 0  # an empty filter flushes nothing
    assert cache.invalidate(Invalidation(prompt_version="v1")) == 1
    assert await answer_of(stage, make_call("refund?", tags=v1)) is None
    assert await answer_of(stage, make_call("refund?", tags={**v1, "prompt_version": "v2"})) == "v2 answer"
    assert cache.invalidate(Invalidation(everything=True)) == 1 and cache.stats().entries == 0


async def test_degraded_calls_are_not_stored_under_the_asked_model() -> None:
    stage, cache = stage_with(faq())
    c = make_call()
    await stage(c)
    c.route_reason = "degrade"
    store(stage, c, "from the cheaper model")
    assert cache.stats().entries == 0


async def test_shared_pools_are_explicit() -> None:
    with pytest.raises(ValueError):
        CachePolicy(name="x", match={"feature": "faq"})  # neither scope nor pool
    with pytest.raises(ValueError):
        CachePolicy(name="x", scope={})
    stage, _ = stage_with(CachePolicy(name="docs", match={"feature": "docs"}, shared_pool="public-docs"))
    a = make_call(tags={"tenant": "acme", "feature": "docs"})
    await stage(a)
    store(stage, a, "public answer")
    b = make_call(tags={"tenant": "globex", "feature": "docs"})
    assert await answer_of(stage, b) == "public answer" and b.cache_scope == "pool:public-docs"


def test_lru_bound() -> None:
    cache = MemoryCache(max_entries=3, index_factory=ExactIndex)
    stage = CacheStage(CacheConfig(url="memory", policies=[faq(semantic=False)]), cache, toy_embed, 0.95, lambda: 1.0)
    for i in range(5):
        c = make_call(f"question {i}?")
        asyncio.run(stage(c))
        store(stage, c, str(i))
    assert cache.stats().entries == 3
    assert asyncio.run(answer_of(stage, make_call("question 0?"))) is None
    assert asyncio.run(answer_of(stage, make_call("question 4?"))) == "4"


# ---- persistence ---------------------------------------------------------------------------------


async def test_entries_and_vectors_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    p = SqlitePersistence.open(url)
    assert p is not None
    cache = MemoryCache(persistence=p, index_factory=ExactIndex)
    stage = CacheStage(CacheConfig(url=url, policies=[faq()]), cache, toy_embed, 0.95, lambda: 1000.0)
    for q, a in (("refund please?", "refund answer"), ("password reset?", "password answer"), ("cancel order?", "cancel answer")):
        c = make_call(q)
        await stage(c)
        store(stage, c, a)
    assert cache.invalidate(Invalidation(scope="tenant=acme", feature="nope")) == 0
    assert cache.invalidate(Invalidation(scope="tenant=acme", model="gpt-4o")) == 0  # another model: none
    p.close()  # writes what is pending

    p2 = SqlitePersistence.open(url)
    assert p2 is not None
    restored = MemoryCache(persistence=p2, index_factory=ExactIndex)
    restored.restore(p2.load(1000.0, 100))
    stage2 = CacheStage(CacheConfig(url=url, policies=[faq()]), restored, toy_embed, 0.95, lambda: 1000.0)
    assert restored.stats().entries == 3
    assert await answer_of(stage2, make_call("refund please?")) == "refund answer"
    assert await answer_of(stage2, make_call("please, a refund?")) == "refund answer"  # the vector came back too
    restored.invalidate(Invalidation(everything=True))
    p2.close()
    p3 = SqlitePersistence.open(url)
    assert p3 is not None and p3.load(1000.0, 100) == []
    p3.close()


# ---- the scope property ------------------------------------------------------------------------------

TENANTS = st.sampled_from(["acme", "globex", "initech", "umbrella"])
QUESTIONS = st.sampled_from(["refund?", "refund please", "password reset", "shipping time", "cancel my order", "invoice copy"])
OPS = st.lists(st.tuples(st.sampled_from(["store", "lookup"]), TENANTS, QUESTIONS, st.sampled_from(["v1", "v2"])), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_a_lookup_never_crosses_its_scope(ops: list[tuple[str, str, str, str]]) -> None:
    """Whatever was stored by whom, every hit is an answer stored in the caller's own
    tenant, under the same prompt version (answers name their owner)."""
    stage, _ = stage_with(faq(), threshold=0.9)

    async def run() -> None:
        for op, tenant, q, version in ops:
            c = make_call(q, tags={"tenant": tenant, "feature": "faq", "prompt_version": version})
            await stage(c)
            if op == "store" and c.cache_plan is not None:
                store(stage, c, f"{tenant}/{version}")
            elif c.cache_hit is not None:
                owner = orjson.loads(c.cache_hit.entry.body)["answer"]
                assert owner == f"{tenant}/{version}", (owner, tenant, version)
                assert c.cache_hit.entry.scope == f"tenant={tenant}" == c.cache_scope

    asyncio.run(run())


# ---- what must never be stored or shared (review findings) -----------------------------------------


def store_with(stage: CacheStage, call: Call, answer: str, finish_reason: str) -> None:
    stage.remember(call, orjson.dumps({"answer": answer}), cost=Decimal("0.001"), list_cost=Decimal("0.001"),
                   input_tokens=10, output_tokens=5, provider="openai", deployment="d", model_used=call.model,
                   finish_reason=finish_reason)  # fmt: skip


async def test_an_answer_cut_short_by_a_later_control_is_not_stored_for_callers_without_it() -> None:
    stage, cache = stage_with(faq(semantic=False))
    capped = make_call("Explain the refund policy in detail.")
    capped.body["max_tokens"] = 500
    await stage(capped)
    capped.body["max_tokens"] = 7  # a budget's slowdown step lowered it after the key was taken
    store_with(stage, capped, "Refunds are", "length")
    assert cache.stats().entries == 0
    finished = make_call("Explain the refund policy briefly.")
    await stage(finished)
    finished.body["max_tokens"] = 4096  # the budget stage's default bound: the answer ended by itself
    store_with(stage, finished, "Refunds take 5 days.", "stop")
    plain = make_call("Explain the refund policy briefly.")
    assert await answer_of(stage, plain) == "Refunds take 5 days."


def test_anthropic_beta_features_are_part_of_the_key() -> None:
    def anthropic_call(headers: dict[str, str]) -> Call:
        body = {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
        return Call(wire="anthropic", endpoint="messages", body=body, raw_body=orjson.dumps(body), headers=headers, model=body["model"])

    plain = keys.exact_key(anthropic_call({}), "s", "p")
    assert keys.exact_key(anthropic_call({"anthropic-beta": "context-1m-2025-08-07"}), "s", "p") != plain
    assert keys.exact_key(anthropic_call({"anthropic-version": "2023-06-01"}), "s", "p") != plain


async def test_a_bad_cache_header_is_refused_even_where_no_policy_caches() -> None:
    stage = CacheStage(CacheConfig(url="memory"), None)
    with pytest.raises(GatewayError):
        await stage(make_call(headers={"x-spendgate-cache": "nonsense"}))
    ok = make_call(headers={"x-spendgate-cache": "bypass"})
    await stage(ok)
    assert ok.cache_status == "bypass"


def test_the_cache_header_is_not_a_tag() -> None:
    from spendgate.controls.tags import header_tags

    assert header_tags({"x-spendgate-cache": "use", "x-spendgate-team": "search"}) == {"team": "search"}


async def test_error_bodies_with_status_200_are_never_stored() -> None:
    from spendgate.cache.serve import MissRecorder
    from spendgate.ledger.events import UsageEvent

    stage, cache = stage_with(faq(semantic=False))
    event = UsageEvent(request_id="r", cost=Decimal("0.001"), list_cost=Decimal("0.001"), finish_reason="stop")
    for body in (
        {"error": {"message": "upstream overloaded", "type": "server_error"}},
        {"id": "x", "object": "chat.completion", "choices": []},
        {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": None}]},
    ):
        c = make_call("refund?")
        await stage(c)
        MissRecorder(stage, c).done(event, orjson.dumps(body))
    assert cache.stats().entries == 0
    good = make_call("refund?")
    await stage(good)
    answer = {"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip
    MissRecorder(stage, good).done(event, orjson.dumps(answer))
    assert cache.stats().entries == 1


async def test_an_exact_hit_does_not_embed_the_question() -> None:
    calls: list[str] = []

    def counting_embed(text: str) -> np.ndarray:
        calls.append(text)
        return toy_embed(text)

    cache = MemoryCache(index_factory=ExactIndex)
    stage = CacheStage(CacheConfig(url="memory", policies=[faq()]), cache, counting_embed, 0.95, lambda: 1000.0)
    first = make_call("How do I get a refund?")
    await stage(first)  # miss: embedded once for the semantic lookup, reused for the store
    store(stage, first, "Refunds take 5 days.")
    assert len(calls) == 1
    assert await answer_of(stage, make_call("How do I get a refund?")) == "Refunds take 5 days."
    assert len(calls) == 1  # served by the exact key: no embedding
    assert await answer_of(stage, make_call("refund: how do I get one")) == "Refunds take 5 days."
    assert len(calls) == 2
