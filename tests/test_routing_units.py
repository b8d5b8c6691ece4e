"""Routing's decisions in process: the policy's enforcement (aliases included), what a
key may reach through fallbacks, what budgets price, and the failover loop's limits."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from spendgate.config import ApiKey, Deployment, parse_config
from spendgate.controls.worst_case import worst_case
from spendgate.errors import GatewayError
from spendgate.pipeline import Call
from spendgate.pricing.catalog import Catalog
from spendgate.routing.failover import AttemptNumbers, Failover, Failure, Success
from spendgate.routing.health import Health
from spendgate.routing.router import Router
from spendgate.routing.schema import HealthConfig, RetryConfig

CONFIG = """
deployments:
  - {name: mini, provider: openai, model: gpt-4o-mini}
  - {name: haiku, provider: anthropic, model: claude-haiku-4-5}
  - {name: big, provider: openai, model: gpt-4.1}
routing:
  models:
    gpt-4o-mini: {fallbacks: [claude-haiku-4-5], context_window_fallbacks: [gpt-4.1]}
  tiers: {small: [gpt-4o-mini], flagship: [gpt-4.1]}
  policy:
    rules:
      - {name: chat, match: {feature: chat}, use: tier:small, enforce: reject}
      - {name: chat-later, match: {feature: chat}, use: tier:flagship}
      - {name: reports, match: {feature: report}, use: tier:flagship, enforce: reject}
  cascades:
    - {name: c, steps: [tier:small, tier:flagship], checks: [{kind: refusal}]}
"""


def call(model: str, tags: dict[str, str] | None = None, key: ApiKey | None = None, **body: Any) -> Call:
    c = Call(wire="openai", endpoint="chat.completions", body={"model": model, "messages": [{"role": "user", "content": "hi"}], **body},
             raw_body=b"{}", headers={}, model=model, tags=tags or {})  # fmt: skip
    c.key = key
    return c


def routed(router: Router, c: Call) -> Call:
    target = router.policy.resolve(c)
    router.plan(c, target)
    return c


@pytest.fixture
def router() -> Router:
    return Router(parse_config(CONFIG))


@pytest.mark.parametrize("name", ["tier:flagship", "cascade:c", "feature:report", "gpt-4.1"])
def test_a_rejecting_rule_cannot_be_bypassed_by_any_name(router: Router, name: str) -> None:
    with pytest.raises(GatewayError) as info:
        router.policy.resolve(call(name, {"feature": "chat"}))
    assert info.value.status == 400 and "(chat)" in info.value.message


def test_a_rejecting_rule_lets_through_what_it_routes_to(router: Router) -> None:
    # reports use tier:flagship = [gpt-4.1]: asking for gpt-4.1 itself is fine
    assert router.policy.resolve(call("gpt-4.1", {"feature": "report"})).primary == "gpt-4.1"
    assert router.policy.resolve(call("tier:flagship", {"feature": "report"})).label == "tier:flagship"
    # without a covering rule, aliases are served as named
    assert router.policy.resolve(call("cascade:c")).cascade is not None


def test_the_first_rule_for_a_feature_decides_like_auto(router: Router) -> None:
    assert router.policy.resolve(call("feature:chat")).label == "tier:small"
    assert router.policy.resolve(call("auto", {"feature": "chat"})).label == "tier:small"


def test_a_cascade_of_cascades_is_a_config_error() -> None:
    bad = CONFIG.replace("checks: [{kind: refusal}]}", "checks: [{kind: refusal}]}\n    - {name: d, steps: [cascade:c, tier:flagship]}")
    with pytest.raises(ValueError, match="has a cascade as a step"):
        Router(parse_config(bad))
    loop = CONFIG.replace("steps: [tier:small, tier:flagship]", "steps: [cascade:c, tier:flagship]")
    with pytest.raises(ValueError, match="has a cascade as a step"):
        Router(parse_config(loop))


def test_a_key_reaches_no_model_it_may_not_use_through_fallbacks(router: Router) -> None:
    key = ApiKey(id="small-only", allowed_models=["gpt-4o-mini"])
    c = routed(router, call("gpt-4o-mini", key=key))
    assert [d.name for d in c.candidates] == ["mini"]  # neither the haiku fallback nor the gpt-4.1 context fallback
    assert router.context_fallbacks(c.candidates[0], "chat.completions", key) == []
    anyone = routed(router, call("gpt-4o-mini"))
    assert [d.name for d in anyone.candidates] == ["mini", "haiku", "big"]


def test_context_window_fallbacks_are_priced_but_tried_only_on_a_prompt_too_long(router: Router) -> None:
    config = parse_config(CONFIG)
    c = routed(router, call("gpt-4o-mini", max_tokens=1000))
    assert c.context_only == [{"big"}]
    # the budget's worst case is gpt-4.1's (the dearest it may reach), not gpt-4o-mini's
    catalog = Catalog(config)
    alone = routed(Router(parse_config(CONFIG.replace(", context_window_fallbacks: [gpt-4.1]", ""))), call("gpt-4o-mini", max_tokens=1000))
    assert worst_case(c, catalog) > worst_case(alone, catalog) > Decimal(0)


def dep(name: str, retries: int = 0, wait: float = 10.0) -> Deployment:
    return Deployment(name=name, provider="openai", model="m", base_url="http://127.0.0.1:9/v1", retries=retries, retry_max_wait_s=wait)


class Script:
    """An attempt function answering from a script, recording what was tried."""

    def __init__(self, outcomes: dict[str, list[Success | Failure]]) -> None:
        self.outcomes = outcomes
        self.tried: list[tuple[str, int, str]] = []

    async def __call__(self, d: Deployment, number: int, reason: str) -> Success | Failure:
        self.tried.append((d.name, number, reason))
        return self.outcomes[d.name].pop(0)


def failover(max_attempts: int = 6, sleeps: list[float] | None = None) -> Failover:
    async def sleep(s: float) -> None:
        if sleeps is not None:
            sleeps.append(s)

    return Failover(Health(HealthConfig(allowed_fails=100)), RetryConfig(jitter=0), max_attempts, sleep=sleep)


def fail(kind: str = "server", retry_after: float | None = None) -> Failure:
    return Failure(503, b"{}", kind, retry_after=retry_after)


def test_attempts_are_counted_across_a_calls_steps() -> None:
    f = failover(max_attempts=3)
    numbers = AttemptNumbers()
    script = Script({"a": [fail(), fail()], "b": [fail(), fail()]})
    first = asyncio.run(f.run([dep("a", retries=1)], 0, "cascade", script, numbers, []))
    second = asyncio.run(f.run([dep("b", retries=1)], 0, "cascade-escalation", script, numbers, []))
    assert isinstance(first, Failure) and isinstance(second, Failure)
    assert script.tried == [("a", 1, "cascade"), ("a", 2, "retry"), ("b", 3, "cascade-escalation")]


def test_no_backoff_is_slept_when_no_attempt_is_left() -> None:
    sleeps: list[float] = []
    f = failover(max_attempts=1, sleeps=sleeps)
    script = Script({"a": [fail(retry_after=5)]})
    result = asyncio.run(f.run([dep("a", retries=3)], 0, "direct", script, AttemptNumbers(), []))
    assert isinstance(result, Failure) and sleeps == [] and len(script.tried) == 1


def test_a_deployment_that_cannot_take_the_request_is_skipped_without_an_attempt_number() -> None:
    script = Script({"a": [fail("server")], "b": [fail("unservable")], "c": [Success(sent=True)]})
    numbers = AttemptNumbers()
    result = asyncio.run(failover().run([dep("a"), dep("b"), dep("c")], 0, "direct", script, numbers, []))
    assert isinstance(result, Success)
    assert [(n, num) for n, num, _ in script.tried] == [("a", 1), ("b", 2), ("c", 2)]  # b's number is reused by c
    # a chain that only fails keeps the real failure, not the unservable one
    script = Script({"a": [fail("server")], "b": [fail("unservable")]})
    result = asyncio.run(failover().run([dep("a"), dep("b")], 0, "direct", script, AttemptNumbers(), []))
    assert isinstance(result, Failure) and result.kind == "server"


def test_a_retry_after_sends_the_call_elsewhere_when_another_deployment_is_free() -> None:
    sleeps: list[float] = []
    script = Script({"a": [fail("rate_limited", retry_after=2)], "b": [Success(sent=True)]})
    result = asyncio.run(failover(sleeps=sleeps).run([dep("a", retries=2), dep("b")], 0, "direct", script, AttemptNumbers(), []))
    assert isinstance(result, Success) and sleeps == [] and [n for n, _, _ in script.tried] == ["a", "b"]
    # alone, it waits exactly the Retry-After
    script = Script({"a": [fail("rate_limited", retry_after=2), Success(sent=True)]})
    asyncio.run(failover(sleeps=sleeps).run([dep("a", retries=2)], 0, "direct", script, AttemptNumbers(), []))
    assert sleeps == [2]
