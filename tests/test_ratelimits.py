"""Rate limits: RPM / TPM / concurrency per scope instance, sliding minute, batch share."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from spendgate.controls.ratelimits import SLOT_S, RateLimitStage
from spendgate.controls.schema import RateLimit
from spendgate.errors import GatewayError
from spendgate.pipeline import Call
from spendgate.state.memory import MemoryCounterStore

T0 = 1_000_000.0  # a slot boundary (divisible by SLOT_S)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_call(key: str = "k1", tags: dict[str, str] | None = None, body: dict[str, Any] | None = None, model: str = "gpt-4o") -> Call:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello, world"}], "max_tokens": 100, **(body or {})}
    call = Call(wire="openai", endpoint="chat.completions", body=body, raw_body=b"", headers={}, model=model)
    call.key_id = key
    call.tags = dict(tags or {})
    return call


def stage(*limits: RateLimit, clock: Clock | None = None, store: MemoryCounterStore | None = None, **kw: Any) -> RateLimitStage:
    return RateLimitStage(list(limits), store or MemoryCounterStore(), clock=clock or Clock(), **kw)


async def refused(s: RateLimitStage, call: Call) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await s(call)
    return info.value


def header(call: Call, name: str) -> str | None:
    for k, v in call.response_headers:
        if k == name.encode():
            return v.decode()
    return None


async def test_no_limit_no_store_traffic() -> None:
    store = MemoryCounterStore()
    s = stage(RateLimit(name="team-rpm", scope={"team": "search"}, rpm=1), store=store)
    call = make_call()  # no team: not covered
    await s(call)
    await s(make_call())
    assert store.open_reservations() == 0 and not call.finishers


async def test_rpm_refusal_with_retry_after_and_headers() -> None:
    clock = Clock(T0 + 2.5)
    s = stage(RateLimit(name="team-rpm", scope={"team": "search"}, rpm=2), clock=clock)
    for _ in range(2):
        call = make_call(tags={"team": "search"})
        await s(call)
        await call.finish()
    clock.now = T0 + 20.0
    call = make_call(tags={"team": "search"})
    err = await refused(s, call)
    assert err.status == 429 and err.kind == "rate_limit"
    assert "rate limit 'team-rpm' (team=search): 2 requests per minute" in err.message.lower()
    # the two requests were made in the slot starting at T0: it leaves the window at T0 + 60 + SLOT_S
    assert header(call, "retry-after") == str(60 + SLOT_S - 20)
    assert header(call, "x-spendgate-ratelimit-name") == "team-rpm"
    assert header(call, "x-spendgate-ratelimit-limit") == "2"
    assert header(call, "x-spendgate-ratelimit-remaining") == "0"
    assert header(call, "x-spendgate-ratelimit-reset") == header(call, "retry-after")
    # room comes back exactly then
    clock.now = T0 + 60 + SLOT_S - 0.001
    await refused(s, make_call(tags={"team": "search"}))
    clock.now = T0 + 60 + SLOT_S
    await s(make_call(tags={"team": "search"}))


async def test_retry_after_counts_only_the_slots_that_must_leave() -> None:
    clock = Clock(T0)
    s = stage(RateLimit(name="rpm", rpm=3), clock=clock)
    for at in (T0, T0 + 30, T0 + 40):
        clock.now = at
        await s(make_call())
    clock.now = T0 + 50
    call = make_call()
    await refused(s, call)
    # one request must leave: the oldest (slot at T0) leaves the window at T0 + 65
    assert header(call, "retry-after") == "15"


async def test_no_burst_at_the_minute_boundary() -> None:
    """Fixed minute windows would admit 2 × the limit around a boundary; the sliding window does not."""
    clock = Clock(T0 + 59)
    s = stage(RateLimit(name="rpm", rpm=2), clock=clock)
    await s(make_call())
    await s(make_call())
    clock.now = T0 + 61  # a new calendar minute
    await refused(s, make_call())


async def test_tpm_reserves_the_estimate_and_settles_to_actual() -> None:
    store = MemoryCounterStore()
    clock = Clock(T0)
    s = stage(RateLimit(name="tpm", tpm=100_000), clock=clock, store=store)
    call = make_call(body={"max_tokens": 500})
    await s(call)
    counter = f"rl:tpm:global:tpm:{int(T0 // SLOT_S)}"
    settled, reserved, _ = store.bucket(counter)  # type: ignore[misc]
    assert settled == 0
    assert reserved == call.input_tokens_estimate + 500 and call.input_tokens_estimate >= 3
    call.input_tokens, call.output_tokens = 9, 42
    await call.finish()
    assert store.bucket(counter)[:2] == (51, 0)  # type: ignore[index]


async def test_tpm_counts_output_for_every_choice_and_uses_the_default() -> None:
    store = MemoryCounterStore()
    s = stage(RateLimit(name="tpm", tpm=1_000_000), store=store, default_max_tokens=1000)
    call = make_call(body={"max_tokens": 10, "n": 3})
    await s(call)
    counter = f"rl:tpm:global:tpm:{int(T0 // SLOT_S)}"
    assert store.bucket(counter)[1] == call.input_tokens_estimate + 30  # type: ignore[index]
    await call.finish()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    call = Call(wire="openai", endpoint="chat.completions", body=body, raw_body=b"", headers={}, model="gpt-4o")
    await s(call)
    assert store.bucket(counter)[1] == call.input_tokens_estimate + 1000  # type: ignore[index]


async def test_tpm_counts_exactly_before_refusing() -> None:
    """The byte bound over-counts English ~4x; a call it would refuse is counted for real first."""
    store = MemoryCounterStore()
    text = "The quick brown fox jumps over the lazy dog. " * 40  # 1,800 bytes, ~400 tokens
    s = stage(RateLimit(name="tpm", tpm=1_000), store=store)
    call = make_call(body={"messages": [{"role": "user", "content": text}], "max_tokens": 100})
    await s(call)
    assert call.input_tokens_estimate < 500  # the real count, not the 1,800+ bound
    counter = f"rl:tpm:global:tpm:{int(T0 // SLOT_S)}"
    assert store.bucket(counter)[1] == call.input_tokens_estimate + 100  # type: ignore[index]


async def test_request_larger_than_the_limit_is_told_so() -> None:
    s = stage(RateLimit(name="tpm", tpm=50))
    call = make_call(body={"max_tokens": 1000})
    err = await refused(s, call)
    assert err.status == 429 and "alone needs up to" in err.message
    assert header(call, "retry-after") is None  # waiting would not help
    assert header(call, "x-spendgate-ratelimit-name") == "tpm"


async def test_concurrency_slot_freed_on_finish() -> None:
    store = MemoryCounterStore()
    s = stage(RateLimit(name="inflight", scope={"team": "search"}, concurrency=1), store=store)
    first = make_call(tags={"team": "search"})
    await s(first)
    second = make_call(tags={"team": "search"})
    err = await refused(s, second)
    assert "1 requests in flight" in err.message
    assert header(second, "retry-after") == "1"
    await first.finish()
    third = make_call(tags={"team": "search"})
    await s(third)
    await third.finish()
    assert store.open_reservations() == 0


async def test_concurrency_slot_freed_when_the_call_fails() -> None:
    """The proxy runs finishers on every path; a failed call used no tokens and frees its slot."""
    store = MemoryCounterStore()
    s = stage(RateLimit(name="inflight", concurrency=1, tpm=10_000), store=store)
    call = make_call()
    await s(call)
    try:
        raise RuntimeError("upstream broke")
    except RuntimeError:
        pass
    finally:
        await call.finish()  # input_tokens/output_tokens stay 0
    assert store.bucket("rl:inflight:global:inflight")[:2] == (0, 0)  # type: ignore[index]
    assert store.bucket(f"rl:inflight:global:tpm:{int(T0 // SLOT_S)}")[:2] == (0, 0)  # type: ignore[index]
    await s(make_call())


async def test_batch_share_leaves_headroom_for_interactive() -> None:
    s = stage(RateLimit(name="rpm", rpm=10, batch_share=Decimal("0.5")))
    for _ in range(5):
        await s(make_call(tags={"priority": "batch"}))
    batch = make_call(tags={"priority": "batch"})
    err = await refused(s, batch)
    assert "5 requests per minute (batch calls may use 50% of its 10)" in err.message
    assert header(batch, "x-spendgate-ratelimit-limit") == "5"
    for _ in range(5):  # interactive calls still have the other half
        await s(make_call())
    await refused(s, make_call())


async def test_star_scope_counts_each_instance_separately() -> None:
    s = stage(RateLimit(name="per-key", scope={"key": "*"}, rpm=1))
    await s(make_call(key="alice"))
    await s(make_call(key="bob"))
    call = make_call(key="alice")
    err = await refused(s, call)
    assert "(key=alice)" in err.message


async def test_model_and_deployment_scopes() -> None:
    s = stage(RateLimit(name="by-dep", scope={"deployment": "*"}, rpm=1), RateLimit(name="4o", scope={"model": "gpt-4o"}, rpm=5))
    a = make_call()
    a.deployment_name = "east"
    b = make_call()
    b.deployment_name = "west"
    await s(a)
    await s(b)
    c = make_call()
    c.deployment_name = "east"
    err = await refused(s, c)
    assert "'by-dep' (deployment=east)" in err.message


async def test_key_limits_from_the_key_store() -> None:
    key_limit = RateLimit(name="key:k9", scope={"key": "k9"}, rpm=1)
    s = stage(rate_limits_for=lambda call: [key_limit] if call.key_id == "k9" else [])
    await s(make_call(key="k9"))
    await s(make_call(key="other"))
    await refused(s, make_call(key="k9"))


async def test_all_limits_reserve_together() -> None:
    """One refusal leaves nothing reserved on the other limits."""
    store = MemoryCounterStore()
    s = stage(RateLimit(name="wide", rpm=100), RateLimit(name="narrow", scope={"team": "search"}, rpm=1), store=store)
    await s(make_call(tags={"team": "search"}))
    await refused(s, make_call(tags={"team": "search"}))
    assert (await store.usage([f"rl:wide:global:rpm:{int(T0 // SLOT_S)}"])).reserved == 1


async def test_batch_share_rounding_to_zero_admits_no_batch_calls() -> None:
    s = stage(RateLimit(name="tiny", concurrency=1, batch_share=Decimal("0.5")))
    call = make_call(tags={"priority": "batch"})
    err = await refused(s, call)
    assert "0 requests in flight (batch calls may use 50% of its 1), so it admits no such calls" in err.message
    assert header(call, "retry-after") is None
    await s(make_call())


async def test_housekeeping_drops_slots_that_left_every_window() -> None:
    store = MemoryCounterStore()
    clock = Clock(T0)
    s = stage(RateLimit(name="rpm", rpm=10), clock=clock, store=store, expire_interval_s=0.01)
    call = make_call()
    await s(call)
    await call.finish()
    counter = f"rl:rpm:global:rpm:{int(T0 // SLOT_S)}"
    assert store.bucket(counter) is not None
    clock.now = T0 + SLOT_S + 60  # the slot has left every window
    s.start()
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if store.bucket(counter) is None:
                break
    finally:
        await s.close()
    assert store.bucket(counter) is None
