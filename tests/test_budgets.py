"""Budgets: windows, worst-case reservations, slowdown, burst grants, ledger
rebuild and restarts — driven through `BudgetStage` with hand-built calls."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from spendgate.config import Config, parse_config
from spendgate.controls import worst_case
from spendgate.controls.budgets import BudgetStage
from spendgate.controls.schema import Budget, ControlsConfig, Window
from spendgate.controls.windows import CalendarClock, RollingClock, calendar_span, rolling_step
from spendgate.errors import GatewayError
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.sqlite import SQLiteLedger
from spendgate.pipeline import Call
from spendgate.pricing.catalog import Catalog
from spendgate.routing.router import RouteStage, Router
from spendgate.state.durable import DurableCounterStore, StateDB
from spendgate.state.memory import MemoryCounterStore

D = Decimal
BERLIN = ZoneInfo("Europe/Berlin")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# ---- windows ------------------------------------------------------------------------------------


def test_day_starts_at_local_midnight() -> None:
    start, end = calendar_span("day", BERLIN, ts("2026-06-10T23:30:00+00:00"))  # 01:30 on the 11th in Berlin
    assert start == ts("2026-06-11T00:00:00+02:00") and end == ts("2026-06-12T00:00:00+02:00")
    start, _ = calendar_span("day", BERLIN, ts("2026-06-10T21:59:59+00:00"))  # 23:59:59 on the 10th
    assert start == ts("2026-06-10T00:00:00+02:00")


def test_dst_days_are_23_and_25_hours_long() -> None:
    start, end = calendar_span("day", BERLIN, ts("2026-03-29T12:00:00+02:00"))
    assert end - start == 23 * 3600 and start == ts("2026-03-29T00:00:00+01:00")
    start, end = calendar_span("day", BERLIN, ts("2026-10-25T12:00:00+01:00"))
    assert end - start == 25 * 3600 and end == ts("2026-10-26T00:00:00+01:00")


def test_a_midnight_that_does_not_exist_starts_the_day_when_the_clock_jumps() -> None:
    havana = ZoneInfo("America/Havana")  # DST starts at 00:00: the clock jumps to 01:00
    start, end = calendar_span("day", havana, ts("2026-03-08T12:00:00-04:00"))
    assert start == ts("2026-03-08T05:00:00+00:00") and end == ts("2026-03-09T00:00:00-04:00")
    assert end - start == 23 * 3600
    assert calendar_span("day", havana, start - 1)[1] == start  # the day before ends where this one starts


def test_repeated_hour_of_a_fall_back_is_two_windows() -> None:
    first = ts("2026-10-25T02:30:00+02:00")  # 02:30 CEST
    second = ts("2026-10-25T02:30:00+01:00")  # 02:30 CET, an hour later
    a, b = calendar_span("hour", BERLIN, first), calendar_span("hour", BERLIN, second)
    assert a == (ts("2026-10-25T02:00:00+02:00"), ts("2026-10-25T02:00:00+01:00"))
    assert b == (a[1], a[1] + 3600)


def test_week_starts_monday_and_months_roll_over() -> None:
    start, end = calendar_span("week", ZoneInfo("UTC"), ts("2026-12-03T10:00:00+00:00"))  # a Thursday
    assert start == ts("2026-11-30T00:00:00+00:00") and end == ts("2026-12-07T00:00:00+00:00")
    start, end = calendar_span("month", BERLIN, ts("2026-12-31T23:30:00+01:00"))
    assert start == ts("2026-12-01T00:00:00+01:00") and end == ts("2027-01-01T00:00:00+01:00")
    start, end = calendar_span("month", BERLIN, ts("2026-12-31T23:30:00+00:00"))  # already January in Berlin
    assert start == ts("2027-01-01T00:00:00+01:00") and end == ts("2027-02-01T00:00:00+01:00")
    start, end = calendar_span("month", ZoneInfo("UTC"), ts("2028-02-15T00:00:00+00:00"))
    assert (end - start) / 86400 == 29  # leap year


def test_calendar_counters_change_at_the_boundary() -> None:
    clock = CalendarClock("day", "Europe/Berlin")
    before = clock.place("p", ts("2026-06-10T23:59:59.999+02:00"))
    after = clock.place("p", ts("2026-06-11T00:00:00+02:00"))
    assert before.counter != after.counter and before.check == (before.counter,)
    assert before.resets_at == after.window_start
    assert before.reset_iso == "2026-06-11T00:00:00+02:00"


def test_rolling_window_buckets() -> None:
    assert rolling_step(24 * 3600) == 3600 and rolling_step(3600) == 120 and rolling_step(7 * 86400) == 21600
    assert rolling_step(30 * 86400) == 86400 and rolling_step(60) == 60 and rolling_step(200 * 604800) % 60 == 0
    clock = RollingClock(24 * 3600, "24h")
    assert clock.n == 24
    p = clock.place("p", 100_000.0)
    assert len(p.check) == 25 and p.counter == p.check[0]
    assert p.window_end - p.window_start == 25 * 3600
    # a bucket is checked by every call until it is `length` behind, then dropped
    idx = int(100_000 // 3600)
    later = clock.place("p", (idx + 24) * 3600.0 + 1)
    assert p.counter in later.check
    gone = clock.place("p", (idx + 25) * 3600.0)
    assert p.counter not in gone.check and p.expires_at == gone.valid_from


async def test_rolling_budget_never_lets_a_window_hold_more_than_the_limit() -> None:
    """Spend at the very end of a sub-bucket is still counted a full window later."""
    clock = RollingClock(3600, "1h")  # 30 buckets of 120 s, 31 checked
    store = MemoryCounterStore()
    limit = D("10")

    async def spend(at: float, rid: str) -> bool:
        p = clock.place("b", at)
        from spendgate.state.store import Charge

        ok = await store.reserve(rid, [Charge(p.counter, limit, limit, p.check)], at, 60) is None
        if ok:
            await store.settle(rid, {p.counter: limit}, at)
        return ok

    t0 = 120 * 1000 + 119.9  # end of a sub-bucket
    assert await spend(t0, "a")
    assert not await spend(t0 + 3599, "b")  # within an hour: refused
    assert await spend(t0 + 3600.2, "c")  # a full hour later: room again


# ---- the stage: fixtures -------------------------------------------------------------------------

CONFIG = """
deployments:
  - {name: oa-4o, provider: openai, model: gpt-4o, base_url: "http://127.0.0.1:9/v1",
     price: {input_per_mtok: "2.5", output_per_mtok: "10"}}
  - {name: oa-mini, provider: openai, model: gpt-4o-mini, base_url: "http://127.0.0.1:9/v1",
     price: {input_per_mtok: "0.15", output_per_mtok: "0.6"}}
  - {name: sonnet, provider: anthropic, model: claude-sonnet-4-5, base_url: "http://127.0.0.1:9",
     price: {input_per_mtok: "3", output_per_mtok: "15", cache_write_per_mtok: "3.75", cache_read_per_mtok: "0.3"}}
  - {name: local, provider: openai_compatible, model: mystery-model-xyz, base_url: "http://127.0.0.1:9/v1"}
  - {name: embed, provider: openai, model: text-embedding-3-small, base_url: "http://127.0.0.1:9/v1",
     price: {input_per_mtok: "0.02", output_per_mtok: "0"}}
"""


def make_config(budgets: list[dict[str, Any]], **extra: Any) -> Config:
    cfg = parse_config(CONFIG)
    return cfg.model_copy(update={"budgets": [Budget.model_validate(b) for b in budgets], **extra})


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


NOW = ts("2026-11-20T12:00:00+01:00")


def make_stage(
    budgets: list[dict[str, Any]], *, store: Any = None, clock: Clock | None = None, grants: Any = None, keys: Any = None, config: Config | None = None
) -> BudgetStage:
    cfg = config or make_config(budgets)
    return BudgetStage(
        cfg, Catalog(cfg), store or MemoryCounterStore(), RouteStage(Router(cfg)), grants, keys, clock=clock or Clock(NOW)
    )


def make_call(model: str = "gpt-4o", *, tags: dict[str, str] | None = None, wire: str = "openai", endpoint: str = "chat.completions", **body: Any) -> Call:
    if endpoint == "embeddings":
        payload: dict[str, Any] = {"model": model, "input": "hello"}
    elif wire == "anthropic":
        payload = {"model": model, "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
    else:
        payload = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    payload.update(body)
    call = Call(wire=wire, endpoint=endpoint, body=payload, raw_body=orjson.dumps(payload), headers={}, model=model)
    call.tags = dict(tags or {})
    call.key_id = "k1"
    return call


@pytest.fixture(autouse=True)
def fixed_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 input tokens for every call, whatever estimator is installed."""
    monkeypatch.setattr(worst_case, "estimate_input_tokens", lambda call: 1000)
    monkeypatch.setattr(worst_case, "count_input_tokens", lambda call: 1000)


def header(call: Call, name: str) -> str | None:
    found = [v.decode() for k, v in call.response_headers if k.decode() == name]
    return found[-1] if found else None


async def run(stage: BudgetStage, call: Call, cost: str | None = None) -> None:
    """Admit the call; when `cost` is given, finish it at that cost."""
    await stage(call)
    if cost is not None:
        call.cost = D(cost)
        await call.finish()


MONTHLY = {"name": "search-monthly", "scope": {"team": "search"}, "window": {"period": "month", "timezone": "Europe/Berlin"}, "limit": "200"}
# gpt-4o, 1,000 input tokens at $2.50/M and 1,000 output tokens at $10/M: $0.0125
WORST_4O = D("0.0125")


# ---- reserve → finish ------------------------------------------------------------------------------


async def test_call_reserves_its_worst_case_then_settles_to_its_cost() -> None:
    stage = make_stage([MONTHLY])
    call = make_call(max_tokens=1000, tags={"team": "search"})
    await stage(call)
    [row] = await stage.budget_status()
    assert row["reserved"] == WORST_4O and row["spent"] == 0
    assert header(call, "x-spendgate-budget-name") == "search-monthly"
    assert header(call, "x-spendgate-budget-remaining") == "199.987500"
    call.cost = D("0.004")
    await call.finish()
    [row] = await stage.budget_status()
    assert row["reserved"] == 0 and row["spent"] == D("0.004")
    assert row["window_start"] == "2026-11-01T00:00:00+01:00" and row["resets_at"] == "2026-12-01T00:00:00+01:00"


async def test_a_call_that_spent_nothing_releases_its_reservation() -> None:
    stage = make_stage([MONTHLY])
    await run(stage, make_call(max_tokens=1000, tags={"team": "search"}), cost="0")
    [row] = await stage.budget_status()
    assert row["reserved"] == 0 and row["spent"] == 0


async def test_calls_outside_every_budget_are_untouched() -> None:
    stage = make_stage([MONTHLY])
    call = make_call(tags={"team": "support"})
    await stage(call)
    assert not call.body_changed and not call.finishers and not call.response_headers


async def test_refusal_says_what_is_left_and_sets_the_headers() -> None:
    stage = make_stage([{**MONTHLY, "limit": "0.02"}])
    await run(stage, make_call(max_tokens=1000, tags={"team": "search"}), cost="0.0125")
    call = make_call(max_tokens=1000, tags={"team": "search"})
    with pytest.raises(GatewayError) as err:
        await stage(call)
    e = err.value
    assert e.status == 429 and e.kind == "rate_limit"
    assert e.message == (
        "The budget 'search-monthly' (team=search) has $0.0075 left of $0.02 until 2026-12-01T00:00:00+01:00; "
        "this call may cost up to $0.0125."
    )
    assert header(call, "x-spendgate-budget-name") == "search-monthly"
    assert header(call, "x-spendgate-budget-limit") == "0.020000"
    assert header(call, "x-spendgate-budget-remaining") == "0.007500"
    assert header(call, "x-spendgate-budget-reset") == "2026-12-01T00:00:00+01:00"
    assert header(call, "retry-after") == str(int(ts("2026-12-01T00:00:00+01:00") - NOW))
    assert not call.finishers  # nothing held


async def test_concurrent_calls_through_the_stage_never_overshoot() -> None:
    stage = make_stage([{**MONTHLY, "limit": "0.5"}])
    admitted = refused = 0

    async def one(i: int) -> None:
        nonlocal admitted, refused
        call = make_call(max_tokens=1000, tags={"team": "search"})
        try:
            await stage(call)
        except GatewayError:
            refused += 1
            return
        admitted += 1
        await asyncio.sleep((i % 7) / 1000)
        call.cost = WORST_4O  # every call spends its whole worst case
        await call.finish()

    await asyncio.gather(*(one(i) for i in range(100)))
    [row] = await stage.budget_status()
    assert admitted == 40 and refused == 60  # 0.5 / 0.0125
    assert row["spent"] == D("0.5") and row["reserved"] == 0


async def test_every_covering_budget_is_reserved_all_or_nothing() -> None:
    team = {**MONTHLY, "limit": "1"}
    user = {"name": "per-user", "scope": {"user": "*"}, "window": {"period": "day"}, "limit": "0.02"}
    stage = make_stage([team, user])
    await run(stage, make_call(max_tokens=1000, tags={"team": "search", "user": "ann"}), cost="0.0125")
    with pytest.raises(GatewayError) as err:
        await stage(make_call(max_tokens=1000, tags={"team": "search", "user": "ann"}))
    assert "'per-user' (user=ann)" in err.value.message
    rows = {(r["name"], r["instance"]): r for r in await stage.budget_status()}
    assert rows[("search-monthly", "team=search")]["reserved"] == 0  # the team budget kept nothing of the refused call
    await stage(make_call(max_tokens=1000, tags={"team": "search", "user": "bob"}))  # bob has his own instance
    rows = {(r["name"], r["instance"]): r for r in await stage.budget_status()}
    assert rows[("per-user", "user=bob")]["reserved"] == WORST_4O


# ---- worst case --------------------------------------------------------------------------------------


async def test_missing_max_tokens_is_set_to_the_default_and_recorded() -> None:
    stage = make_stage([MONTHLY], config=make_config([MONTHLY], controls=ControlsConfig(default_max_tokens=2000)))
    call = make_call(tags={"team": "search"})
    await stage(call)
    assert call.body["max_tokens"] == 2000 and call.body_changed and call.max_tokens == 2000
    assert "default_max_tokens:2000" in call.control_actions
    [row] = await stage.budget_status()
    assert row["reserved"] == D("0.0025") + D("0.02")


async def test_legacy_completions_default_to_16_and_choices_multiply() -> None:
    stage = make_stage([MONTHLY])
    call = make_call(endpoint="completions", tags={"team": "search"}, prompt="x", n=3)
    await stage(call)
    assert call.body["max_tokens"] == 16
    [row] = await stage.budget_status()
    assert row["reserved"] == D("0.0025") + 3 * 16 * D("10") / 1_000_000


async def test_embeddings_reserve_input_only() -> None:
    stage = make_stage([MONTHLY])
    call = make_call("text-embedding-3-small", endpoint="embeddings", tags={"team": "search"})
    await stage(call)
    assert not call.body_changed
    [row] = await stage.budget_status()
    assert row["reserved"] == D("0.00002")


async def test_anthropic_cache_control_prices_input_as_cache_writes() -> None:
    stage = make_stage([MONTHLY])
    plain = make_call("claude-sonnet-4-5", wire="anthropic", endpoint="messages", tags={"team": "search"})
    await stage(plain)
    [row] = await stage.budget_status()
    assert row["reserved"] == D("0.003") + D("0.015")
    cached = make_call(
        "claude-sonnet-4-5",
        wire="anthropic",
        endpoint="messages",
        tags={"team": "search"},
        system=[{"type": "text", "text": "long", "cache_control": {"type": "ephemeral"}}],
    )
    await stage(cached)
    [row] = await stage.budget_status()
    assert row["reserved"] == D("0.018") + D("0.00375") + D("0.015")


async def test_model_without_price_is_refused_under_a_budget() -> None:
    stage = make_stage([MONTHLY])
    with pytest.raises(GatewayError) as err:
        await stage(make_call("mystery-model-xyz", max_tokens=100, tags={"team": "search"}))
    assert err.value.status == 403 and err.value.kind == "permission"
    assert "has no price" in err.value.message and "on_missing_price: allow" in err.value.message


async def test_model_without_price_may_be_allowed_and_reserves_zero() -> None:
    stage = make_stage([{**MONTHLY, "on_missing_price": "allow"}])
    call = make_call("mystery-model-xyz", max_tokens=100, tags={"team": "search"})
    await stage(call)
    assert "unpriced:search-monthly" in call.control_actions
    [row] = await stage.budget_status()
    assert row["reserved"] == 0


# ---- slowdown ------------------------------------------------------------------------------------------

SLOW = {
    **MONTHLY,
    "limit": "100",
    "slowdown": [
        {"at": 50, "action": "notify"},
        {"at": 80, "action": "route", "route": {"gpt-4o": "gpt-4o-mini"}, "except_features": ["checkout"]},
        {"at": 90, "action": "cap_max_tokens", "max_tokens": 256},
        {"at": 95, "action": "refuse_batch"},
        {"at": 99, "action": "reject"},
    ],
}


async def at_utilization(percent: str, **kw: Any) -> tuple[BudgetStage, Call]:
    stage = make_stage([SLOW])
    counter = f"budget|search-monthly|month@Europe/Berlin|team=search|{int(ts('2026-11-01T00:00:00+01:00'))}"
    await stage.store.seed(counter, D(percent), 0)  # limit 100: dollars = percent
    call = make_call(max_tokens=1000, tags={"team": "search", **kw.pop("tags", {})}, **kw)
    return stage, call


async def test_below_the_first_step_nothing_happens() -> None:
    stage, call = await at_utilization("49.99")
    await stage(call)
    assert call.control_actions == [] and header(call, "x-spendgate-degraded") is None


async def test_notify_fires_at_its_threshold() -> None:
    stage, call = await at_utilization("50")
    await stage(call)
    assert call.control_actions == ["notify:search-monthly@50%"]
    assert header(call, "x-spendgate-budget-warning") == "search-monthly@50%"
    assert call.model == "gpt-4o"


async def test_route_fires_at_its_threshold_and_reprices() -> None:
    stage, call = await at_utilization("80")
    await stage(call)
    assert call.model == "gpt-4o-mini" and call.route_reason == "degrade" and call.deployment_name == "oa-mini"
    assert "degrade:search-monthly@80%:route gpt-4o->gpt-4o-mini" in call.control_actions
    assert header(call, "x-spendgate-degraded") == "search-monthly@80%;route"
    [row] = await stage.budget_status()
    assert row["reserved"] == D("0.00015") + D("0.0006")  # the cheaper model's worst case
    assert row["slowdown"] == "route@80%"


async def test_route_leaves_critical_features_alone() -> None:
    stage, call = await at_utilization("85", tags={"feature": "checkout"})
    await stage(call)
    assert call.model == "gpt-4o"


async def test_cap_max_tokens_fires_at_its_threshold() -> None:
    stage, call = await at_utilization("90")
    await stage(call)
    assert call.body["max_tokens"] == 256 and call.max_tokens == 256
    assert "degrade:search-monthly@90%:cap_max_tokens 1000->256" in call.control_actions
    assert call.model == "gpt-4o-mini"  # the 80% step still applies


async def test_refuse_batch_fires_at_its_threshold_for_batch_calls_only() -> None:
    stage, call = await at_utilization("95", tags={"priority": "batch"})
    with pytest.raises(GatewayError) as err:
        await stage(call)
    assert err.value.status == 429 and "batch calls are paused" in err.value.message
    assert header(call, "x-spendgate-degraded") == "search-monthly@95%;refuse_batch"
    assert header(call, "retry-after") is not None
    stage, call = await at_utilization("95", tags={"priority": "interactive"})
    await stage(call)


async def test_reject_fires_at_its_threshold() -> None:
    stage, call = await at_utilization("98.9")
    await stage(call)
    stage, call = await at_utilization("99")
    with pytest.raises(GatewayError) as err:
        await stage(call)
    assert err.value.status == 429 and "calls are refused" in err.value.message


async def test_route_changes_which_budgets_cover_the_call() -> None:
    per_model = {"name": "gpt-4o-only", "scope": {"model": "gpt-4o"}, "window": {"period": "day"}, "limit": "10"}
    stage = make_stage([SLOW, per_model])
    counter = f"budget|search-monthly|month@Europe/Berlin|team=search|{int(ts('2026-11-01T00:00:00+01:00'))}"
    await stage.store.seed(counter, D("85"), 0)
    call = make_call(max_tokens=1000, tags={"team": "search"})
    await stage(call)
    rows = {r["name"]: r for r in await stage.budget_status()}
    assert call.model == "gpt-4o-mini"
    assert rows["gpt-4o-only"]["reserved"] == 0  # the degraded call is no longer a gpt-4o call


# ---- burst grants ----------------------------------------------------------------------------------------


async def test_burst_grant_raises_the_limit_while_active(tmp_path: Path) -> None:
    clock = Clock(NOW)
    db = StateDB(tmp_path / "state.db")
    stage = make_stage([{**MONTHLY, "limit": "0.01"}], clock=clock, grants=db)
    with pytest.raises(GatewayError):
        await stage(make_call(max_tokens=1000, tags={"team": "search"}))
    until = datetime.fromtimestamp(NOW + 3600, UTC)
    out = await stage.add_burst(None, {"team": "search"}, D("0.05"), until, "launch")
    assert out["applies_to"] == ["search-monthly"] and out["instance"] == "team=search"
    call = make_call(max_tokens=1000, tags={"team": "search"})
    await run(stage, call, cost="0.0125")
    [row] = await stage.budget_status()
    assert row["burst"] == D("0.05") and row["effective_limit"] == D("0.06") and len(row["bursts"]) == 1
    # a restarted gateway reads the grant back
    again = make_stage([{**MONTHLY, "limit": "0.01"}], clock=clock, grants=db)
    await again.start(None)
    [row] = await again.budget_status()
    assert row["effective_limit"] == D("0.06")
    await again.close()
    clock.now = NOW + 3600  # expired
    [row] = await stage.budget_status()
    assert row["burst"] == 0 and row["effective_limit"] == D("0.01")
    with pytest.raises(GatewayError):
        await stage(make_call(max_tokens=1000, tags={"team": "search"}))


async def test_burst_grant_validation() -> None:
    per_user = {"name": "per-user", "scope": {"user": "*"}, "window": {"period": "day"}, "limit": "1"}
    stage = make_stage([MONTHLY, per_user])
    until = datetime.fromtimestamp(NOW + 60, UTC)
    with pytest.raises(LookupError):
        await stage.add_burst("nope", {}, D("1"), until, "")
    with pytest.raises(ValueError):
        await stage.add_burst("per-user", {}, D("1"), until, "")  # which user?
    with pytest.raises(ValueError):
        await stage.add_burst("search-monthly", {"team": "support"}, D("1"), until, "")
    out = await stage.add_burst("search-monthly", {}, D("1"), until, "")  # its one instance
    assert out["instance"] == "team=search"
    out = await stage.add_burst("per-user", {"user": "ann"}, D("1"), until, "")
    assert out["instance"] == "user=ann"


# ---- per-key budgets ---------------------------------------------------------------------------------------


class FakeKeys:
    def __init__(self, budgets: dict[str, list[Budget]]) -> None:
        self.budgets = budgets

    def budgets_for(self, call: Call) -> list[Budget]:
        return self.budgets.get(call.key_id or "", [])


async def test_key_budgets_are_enforced_like_config_budgets() -> None:
    kb = Budget(name="key:k1", scope={"key": "k1"}, window=Window(period="month"), limit=D("0.02"))
    stage = make_stage([], keys=FakeKeys({"k1": [kb]}))
    await run(stage, make_call(max_tokens=1000), cost="0.0125")
    with pytest.raises(GatewayError) as err:
        await stage(make_call(max_tokens=1000))
    assert "budget 'key:k1' (key=k1)" in err.value.message
    [row] = await stage.budget_status()
    assert row["name"] == "key:k1" and row["spent"] == D("0.0125")


# ---- ledger rebuild and restarts -------------------------------------------------------------------------


def event(request_id: str, cost: str, when: float, **kw: Any) -> UsageEvent:
    ev = UsageEvent(request_id=request_id, ts_start=when, ts_end=when, cost=D(cost), deployment="oa-4o", model_requested="gpt-4o")
    ev.apply_tags(kw.pop("tags", {}))
    for k, v in kw.items():
        setattr(ev, k, v)
    return ev


async def test_settled_spend_is_rebuilt_from_the_ledger_per_instance_and_window() -> None:
    ledger = SQLiteLedger(":memory:")
    ledger.append(
        [
            event("a", "1.10", NOW - 3600, tags={"team": "search", "user": "ann"}),
            event("b", "0.000000000001", NOW - 60, tags={"team": "search", "user": "bob"}),
            event("c", "5", ts("2026-10-31T23:59:59+01:00"), tags={"team": "search", "user": "ann"}),  # last month
            event("d", "7", NOW - 60, tags={"team": "support", "user": "ann"}),
        ]
    )
    per_user = {"name": "per-user-month", "scope": {"user": "*"}, "window": {"period": "month", "timezone": "Europe/Berlin"}, "limit": "10"}
    stage = make_stage([MONTHLY, per_user])
    await stage.start(ledger)
    rows = {(r["name"], r["instance"]): r["spent"] for r in await stage.budget_status()}
    await stage.close()
    assert rows == {
        ("search-monthly", "team=search"): D("1.100000000001"),
        ("per-user-month", "user=ann"): D("8.10"),
        ("per-user-month", "user=bob"): D("0.000000000001"),
    }


async def test_rolling_spend_is_rebuilt_per_sub_bucket() -> None:
    ledger = SQLiteLedger(":memory:")
    ledger.append(
        [
            event("a", "1", NOW - 2 * 3600, tags={"team": "search"}),
            event("b", "2", NOW - 23 * 3600, tags={"team": "search"}),
            event("c", "4", NOW - 26 * 3600, tags={"team": "search"}),  # out of the window
        ]
    )
    rolling = {"name": "daily", "scope": {"team": "search"}, "window": {"rolling": "24h"}, "limit": "10"}
    clock = Clock(NOW)
    stage = make_stage([rolling], clock=clock)
    await stage.start(ledger)
    [row] = await stage.budget_status()
    assert row["spent"] == D("3")
    clock.now = NOW + 2 * 3600  # "b" has left the window (give or take one hourly sub-bucket)
    [row] = await stage.budget_status()
    assert row["spent"] == D("1")
    await stage.close()


async def test_restart_keeps_in_flight_reservations_and_never_double_counts(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    ledger = SQLiteLedger(tmp_path / "ledger.db")
    budget = {**MONTHLY, "limit": "0.03"}

    store = DurableCounterStore(StateDB(path), flush_interval_ms=5).start()
    stage = make_stage([budget], store=store, grants=store.db)
    await stage.start(ledger)
    finished = make_call(max_tokens=1000, tags={"team": "search"})
    in_flight = make_call(max_tokens=1000, tags={"team": "search"})
    await stage(finished)
    await stage(in_flight)
    # `finished` got its answer and its ledger row, but the gateway crashed before it settled
    ledger.append([event(finished.request_id, "0.01", NOW, tags={"team": "search"})])
    assert store.flush()
    await stage.close()
    store.db.close()

    store2 = DurableCounterStore(StateDB(path), flush_interval_ms=5).start()
    stage2 = make_stage([budget], store=store2, grants=store2.db)
    await stage2.start(ledger)
    [row] = await stage2.budget_status()
    # the ledger's $0.01 once (its reservation was dropped), the in-flight worst case still held
    assert row["spent"] == D("0.01") and row["reserved"] == WORST_4O
    with pytest.raises(GatewayError):  # 0.01 + 0.0125 + 0.0125 > 0.03
        await stage2(make_call(max_tokens=1000, tags={"team": "search"}))
    await store2.settle(in_flight.request_id, {row_counter(stage2): D("0.002")}, NOW)
    [row] = await stage2.budget_status()
    assert row["spent"] == D("0.012") and row["reserved"] == 0
    await stage2(make_call(max_tokens=1000, tags={"team": "search"}))
    await stage2.close()
    await store2.close()


def row_counter(stage: BudgetStage) -> str:
    cb = stage.budgets[0]
    inst = next(iter(cb.instances.values()))
    assert inst.placement is not None
    return inst.placement.counter


async def test_a_key_budget_seen_after_start_is_rebuilt_from_the_ledger_first() -> None:
    ledger = SQLiteLedger(":memory:")
    ledger.append([event("old", "0.015", NOW - 60, key_id="k1")])
    kb = Budget(name="key:k1", scope={"key": "k1"}, window=Window(period="month"), limit=D("0.02"))
    stage = make_stage([], keys=FakeKeys({"k1": [kb]}))
    await stage.start(ledger)
    with pytest.raises(GatewayError) as err:  # 0.015 spent before the restart + 0.0125 > 0.02
        await stage(make_call(max_tokens=1000))
    assert "$0.005 left" in err.value.message
    await stage.close()


# ---- more edges ----------------------------------------------------------------------------------------------


async def test_when_the_cheap_input_bound_would_refuse_the_exact_count_is_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    def estimate(call: Call) -> int:
        call.input_tokens_estimate = call.input_tokens_estimate or 9000
        return call.input_tokens_estimate

    def count(call: Call) -> int:
        call.input_tokens_estimate = 1000
        return 1000

    monkeypatch.setattr(worst_case, "estimate_input_tokens", estimate)
    monkeypatch.setattr(worst_case, "count_input_tokens", count)
    stage = make_stage([{**MONTHLY, "limit": "0.02"}])  # 9,000 in + 1,000 out = $0.0325 > $0.02 >= $0.0125
    await stage(make_call(max_tokens=1000, tags={"team": "search"}))
    [row] = await stage.budget_status()
    assert row["reserved"] == WORST_4O


async def test_status_lists_single_instance_budgets_before_any_call() -> None:
    stage = make_stage([MONTHLY, {"name": "per-user", "scope": {"user": "*"}, "window": {"period": "day"}, "limit": "1"}])
    rows = await stage.budget_status()
    assert [(r["name"], r["instance"], r["scope"]) for r in rows] == [("search-monthly", "team=search", {"team": "search"})]
    assert rows[0]["remaining"] == D("200") and rows[0]["slowdown"] is None and rows[0]["window"] == "month (Europe/Berlin)"


async def test_housekeeping_releases_reservations_past_their_ttl() -> None:
    cfg = make_config([MONTHLY])
    cfg.state.reservation_ttl_s = 0.05
    stage = BudgetStage(cfg, Catalog(cfg), MemoryCounterStore(), RouteStage(Router(cfg)), expire_interval_s=0.02)
    await stage.start(None)
    await stage(make_call(max_tokens=1000, tags={"team": "search"}))
    [row] = await stage.budget_status()
    assert row["reserved"] == WORST_4O
    await asyncio.sleep(0.2)
    [row] = await stage.budget_status()
    assert row["reserved"] == 0
    await stage.close()


async def test_model_scoped_spend_is_rebuilt_under_the_model_the_call_was_routed_to() -> None:
    ledger = SQLiteLedger(":memory:")
    degraded = event("a", "0.5", NOW - 60)
    degraded.deployment, degraded.model_used, degraded.route_reason = "oa-mini", "gpt-4o-mini-2024-07-18", "degrade"
    ledger.append([degraded, event("b", "2", NOW - 60)])
    per_model = {"name": "by-model", "scope": {"model": "*"}, "window": {"period": "day"}, "limit": "10"}
    stage = make_stage([per_model])
    await stage.start(ledger)
    rows = {r["instance"]: r["spent"] for r in await stage.budget_status()}
    await stage.close()
    assert rows == {"model=gpt-4o": D("2"), "model=gpt-4o-mini": D("0.5")}


async def test_admin_api_serves_status_and_bursts() -> None:
    from spendgate.admin.api import AdminApi
    from spendgate.controls.identify import KeyRing

    cfg = make_config([MONTHLY])
    stage = make_stage([MONTHLY], config=cfg)
    api = AdminApi(None, KeyRing(cfg), "admin-secret", budgets=stage)
    auth = {"authorization": "Bearer admin-secret"}
    body = orjson.dumps({"budget": None, "scope": {"team": "search"}, "amount": "50", "until": "2099-01-01T00:00:00Z", "reason": "launch"})
    status, out = await api.dispatch("POST", "/admin/budgets/burst", {}, auth, body)
    assert status == 201 and out["applies_to"] == ["search-monthly"]
    status, out = await api.dispatch("POST", "/admin/budgets/burst", {}, auth, orjson.dumps({"budget": "nope", "amount": "1", "until": "2099-01-01"}))
    assert status == 404
    status, out = await api.dispatch("GET", "/admin/budgets", {}, auth, b"")
    assert status == 200 and out["data"][0]["effective_limit"] == D("250")


async def test_rolling_window_refusal_says_when_room_really_comes_back() -> None:
    """A full rolling 24h budget frees room when the spend leaves the window a day
    later, not when the current hourly sub-bucket ends."""
    from spendgate.config import parse_config
    from spendgate.controls.budgets import BudgetStage
    from spendgate.errors import GatewayError
    from spendgate.pipeline import Call
    from spendgate.pricing.catalog import Catalog
    from spendgate.routing.router import RouteStage, Router
    from spendgate.state.memory import MemoryCounterStore

    cfg = parse_config(
        """
deployments: [{name: d, provider: openai, model: gpt-4o, base_url: "http://127.0.0.1:9/v1"}]
budgets: [{name: per-user, scope: {user: "*"}, window: {rolling: 24h}, limit: "0.05"}]
"""
    )
    now = [1_800_000_000.0 + 600]  # ten minutes into an hour
    route = RouteStage(Router(cfg))
    stage = BudgetStage(cfg, Catalog(cfg), MemoryCounterStore(), route, clock=lambda: now[0])

    def call() -> Call:
        body = {"model": "gpt-4o", "max_tokens": 2000, "messages": [{"role": "user", "content": "hi"}]}
        c = Call(wire="openai", endpoint="chat.completions", body=body, raw_body=b"{}", headers={}, model="gpt-4o", tags={"user": "u1"})
        route.reroute(c)
        return c

    first = call()
    await stage(first)  # worst case ~$0.02
    first.cost = Decimal("0.04")
    await first.finish()
    now[0] += 1800  # next hour: the spend is in an older sub-bucket now
    refused = call()
    with pytest.raises(GatewayError):
        await stage(refused)
    retry_after = int(dict(refused.response_headers)[b"retry-after"])
    # the $0.04 leaves the window (24 h plus the one extra sub-bucket that
    # rolling windows check, see docs/controls.md) after its own hour: 24 h 20 min from now
    assert retry_after == 25 * 3600 - 2400
