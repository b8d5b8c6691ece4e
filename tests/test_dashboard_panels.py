"""The dashboard's panels over a ledger with known events: every figure equals
the ledger's own exact `dsum` over the same events; time is pinned."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from spendgate.analytics.since import format_time
from spendgate.dashboard import panels
from spendgate.dashboard.panels import Query, Sources
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.outcomes import record_request_outcome, record_session_outcome
from spendgate.ledger.sqlite import SQLiteLedger

JUNE = 1_717_200_000  # 2024-06-01 00:00 UTC
DAY = 86400
NOW = JUNE + 20 * DAY + 12 * 3600  # 2024-06-21 12:00 UTC
TIERS = {"cheap": ["gpt-4o-mini"], "premium": ["gpt-4o"]}


@pytest.fixture()
def store() -> SQLiteLedger:
    """Every 2 h from June 1 to just before NOW: 3 models, teams with gaps, 7 users,
    sessions of 4 calls, errors, response-cache hits and prompt-cache savings."""
    s = SQLiteLedger(":memory:")
    events = []
    for d in range(21):
        for h in range(0, 24, 2):
            ts = JUNE + d * DAY + h * 3600 + 30
            if ts >= NOW:
                break
            i = len(events)
            events.append(
                UsageEvent(
                    event_id=f"e{i}",
                    ts_start=ts,
                    model_used=["gpt-4o", "gpt-4o-mini", "llama"][i % 3],
                    team=["search", "ads", None][i % 3] if i % 5 else "search",
                    feature=["chat", None][i % 2],
                    user=f"u{i % 7}",
                    session_id=f"s{i // 4}",
                    input_tokens=100,
                    output_tokens=10,
                    cost=Decimal("0.01") + Decimal(i * (i % 7 + 1)) / 10**6,  # users spend differently
                    status="error" if i % 10 == 0 else "ok",
                    cache_status=["miss", "exact", "bypass", "miss"][i % 4],
                    saved=Decimal("0.02") if i % 4 == 1 else Decimal("0.001") if i % 4 == 2 else Decimal(0),
                    saved_by="cache" if i % 4 == 1 else "prompt_cache" if i % 4 == 2 else None,
                )
            )
    s.append(events)
    return s


def src(store: SQLiteLedger, **kw: Any) -> Sources:
    return Sources(store=store, tiers=TIERS, **{"top_n": 3, **kw})


def query(since: float = JUNE, until: float = NOW, **kw: Any) -> Query:
    return Query(since=since, until=until, now=NOW, **kw)


def dsum(store: SQLiteLedger, where: str = "1", params: tuple[Any, ...] = (), column: str = "cost") -> Decimal:
    return Decimal(store.query(f"SELECT coalesce(dsum({column}), '0') FROM usage_events WHERE {where}", params)[0][0])


def test_summary_equals_the_ledger_with_a_filter(store: SQLiteLedger) -> None:
    since = JUNE + 3.5 * DAY
    row = panels.summary(src(store), query(since, filters={"team": "search"}))["rows"][0]
    where, params = "ts_start >= ? AND ts_start < ? AND team = 'search'", (since, NOW)
    assert Decimal(row["cost"]) == dsum(store, where, params) and Decimal(row["saved"]) == dsum(store, where, params, "saved")
    n, err = store.query(f"SELECT count(*), sum(status = 'error') FROM usage_events WHERE {where}", params)[0]
    assert row["requests"] == n and row["tokens"] == 110 * n
    assert Decimal(row["error_rate"]) == (Decimal(err) / n).quantize(Decimal("1e-6"))


def _series(out: dict[str, Any], dim: str) -> dict[tuple[str, Any], Decimal]:
    return {(r["bucket"], r[dim]): Decimal(r["cost"]) for r in out["rows"]}


@pytest.mark.parametrize(("dim", "top_n"), [("user", 3), ("team", 2), ("model", 2)])
def test_spend_over_time_keeps_the_top_n_and_folds_the_rest_into_other(store: SQLiteLedger, dim: str, top_n: int) -> None:
    out = panels.spend_over_time(src(store, top_n=top_n), query(JUNE, JUNE + 7 * DAY, stack_by=dim))
    column = {"model": "model_used"}.get(dim, dim)
    ranked = store.query(
        f"SELECT {column}, dsum(cost) FROM usage_events WHERE ts_start >= ? AND ts_start < ? GROUP BY 1", (JUNE, JUNE + 7 * DAY)
    )
    top = [v for v, _ in sorted(ranked, key=lambda r: -Decimal(r[1]))[:top_n]]
    assert out["bucket"] == "day" and out["series"] == [*top, "(other)"]
    got = _series(out, dim)
    for d in range(7):
        b, day = JUNE + d * DAY, format_time(JUNE + d * DAY)
        window = "ts_start >= ? AND ts_start < ?"
        assert sum(c for (bk, _), c in got.items() if bk == day) == dsum(store, window, (b, b + DAY))  # each bucket adds up
        for v in top:  # each named series is that value's own spend
            cond = f"{column} IS NULL" if v is None else f"{column} = ?"
            assert got.get((day, v), Decimal(0)) == dsum(store, f"{window} AND {cond}", (b, b + DAY, *([] if v is None else [v])))
        named = [v for v in top if v is not None]
        rest = f"{column} IS NOT NULL AND {column} NOT IN ({', '.join('?' * len(named))})" if None in top else f"({column} IS NULL OR {column} NOT IN ({', '.join('?' * len(named))}))"
        assert got.get((day, "(other)"), Decimal(0)) == dsum(store, f"{window} AND {rest}", (b, b + DAY, *named))


def test_spend_over_time_an_untagged_top_value_is_its_own_series() -> None:
    s = SQLiteLedger(":memory:")
    costs = {None: "5", "a": "3", "b": "1", "c": "0.5"}
    s.append([UsageEvent(event_id=f"{t}{d}", ts_start=JUNE + d * DAY + 60, team=t, cost=Decimal(c)) for d in range(3) for t, c in costs.items()])
    out = panels.spend_over_time(src(s, top_n=2), Query(since=JUNE, until=JUNE + 3 * DAY, now=NOW, stack_by="team"))
    assert out["series"] == [None, "a", "(other)"]
    day = format_time(JUNE)
    assert {k: v for k, v in _series(out, "team").items() if k[0] == day} == {(day, None): 5, (day, "a"): 3, (day, "(other)"): Decimal("1.5")}


def test_spend_over_time_with_few_values_has_no_other_and_is_hourly_for_a_day(store: SQLiteLedger) -> None:
    out = panels.spend_over_time(src(store, top_n=10), query(NOW - DAY, NOW, stack_by="model"))
    assert out["bucket"] == "hour" and "(other)" not in out["series"] and len(out["series"]) == 3
    assert sum(Decimal(r["cost"]) for r in out["rows"]) == dsum(store, "ts_start >= ?", (NOW - DAY,))
    # a filter on the stacked dimension leaves just that value
    one = panels.spend_over_time(src(store, top_n=1), query(stack_by="user", filters={"user": "u3"}))
    assert one["series"] == ["u3"] and sum(Decimal(r["cost"]) for r in one["rows"]) == dsum(store, "user = 'u3'")


def test_daily_spend_trailing_average_and_month_end_forecast(store: SQLiteLedger) -> None:
    out = panels.daily_spend(src(store), query(JUNE + 10 * DAY))
    days = [r["day"] for r in out["rows"]]
    assert days[0] == "2024-06-11" and days[-1] == "2024-06-21"
    day16 = next(r for r in out["rows"] if r["day"] == "2024-06-16")
    week = dsum(store, "ts_start >= ? AND ts_start < ?", (JUNE + 9 * DAY, JUNE + 16 * DAY))
    assert Decimal(day16["avg_7d"]) == (week / 7).quantize(Decimal("1e-12"))
    assert Decimal(day16["cost"]) == dsum(store, "ts_start >= ? AND ts_start < ?", (JUNE + 15 * DAY, JUNE + 16 * DAY))
    fc = out["forecast"]
    mtd = dsum(store, "ts_start < ?", (NOW,))
    rate = dsum(store, "ts_start >= ? AND ts_start < ?", (JUNE + 13 * DAY, JUNE + 20 * DAY)) / 7
    assert fc["month"] == "2024-06" and Decimal(fc["month_to_date"]) == Decimal(fc["spent_to_date"]) == mtd
    assert Decimal(fc["forecast"]) == (mtd + rate * Decimal("9.5")).quantize(Decimal("0.000001"))
    assert fc["rate_days"] == 7 and "7 complete UTC days" in fc["method"]


def test_the_forecast_on_a_known_series() -> None:
    s = SQLiteLedger(":memory:")
    # $10 a day at noon, June 1..10; now = June 11 00:00: 10 days done, 20 left at $10/day
    s.append([UsageEvent(event_id=f"d{d}", ts_start=JUNE + d * DAY + 43200, cost=Decimal(10)) for d in range(10)])
    now = JUNE + 10 * DAY
    fc = panels.daily_spend(src(s), Query(since=JUNE, until=now, now=now))["forecast"]
    assert (Decimal(fc["month_to_date"]), Decimal(fc["daily_rate"]), Decimal(fc["forecast"])) == (100, 10, 300)
    # only 3 complete days of history: the rate averages those 3, not 7 with zeros
    s2 = SQLiteLedger(":memory:")
    s2.append([UsageEvent(event_id=f"d{d}", ts_start=JUNE + d * DAY, cost=Decimal(d + 1)) for d in range(3)])
    now = JUNE + 3 * DAY
    fc2 = panels.daily_spend(src(s2), Query(since=JUNE, until=now, now=now))["forecast"]
    assert fc2["rate_days"] == 3 and Decimal(fc2["daily_rate"]) == 2 and Decimal(fc2["forecast"]) == 6 + 2 * 27


def test_cache_counts_response_cache_savings_apart_from_prompt_caching(store: SQLiteLedger) -> None:
    out = panels.cache(src(store), query())
    assert Decimal(out["cache_saved"]) == dsum(store, "saved_by = 'cache'", column="saved")
    assert Decimal(out["saved"]) == dsum(store, column="saved") > Decimal(out["cache_saved"])
    hits, misses = store.query("SELECT sum(cache_status = 'exact'), sum(cache_status = 'miss') FROM usage_events")[0]
    assert (out["hits"], out["misses"]) == (hits, misses)
    assert Decimal(out["hit_rate"]) == (Decimal(hits) / (hits + misses)).quantize(Decimal("1e-6"))
    assert "the cache saved $" + f"{Decimal(out['cache_saved']):,.2f}" in out["headline"]


def test_tier_mix_shares(store: SQLiteLedger) -> None:
    out = panels.tier_mix(src(store), query())
    by = {r["tier"]: r for r in out["rows"]}
    assert Decimal(by["(no tier)"]["cost"]) == dsum(store, "model_used = 'llama'") and by["(no tier)"]["models"] == "llama"
    assert Decimal(by["cheap"]["cost"]) == dsum(store, "model_used = 'gpt-4o-mini'")
    assert sum(Decimal(r["cost"]) for r in out["rows"]) == dsum(store)
    n_cheap, n_all = store.query("SELECT sum(model_used = 'gpt-4o-mini'), count(*) FROM usage_events")[0]
    assert Decimal(out["cheaper_share"]) == (Decimal(n_cheap) / n_all).quantize(Decimal("1e-6"))  # premium is the top tier
    assert panels.tier_mix(Sources(store=store), query())["status"] == "not_configured"


def test_untagged_share(store: SQLiteLedger) -> None:
    out = panels.untagged(src(store), query())
    by = {r["tag"]: r for r in out["rows"]}
    assert Decimal(by["team"]["untagged_cost"]) == dsum(store, "team IS NULL")
    assert Decimal(by["feature"]["untagged_cost"]) == dsum(store, "feature IS NULL")
    anyone = out["rows"][-1]
    assert Decimal(anyone["untagged_cost"]) == dsum(store, "team IS NULL OR feature IS NULL")
    assert out["untagged_share"] == anyone["cost_share"] == format((dsum(store, "team IS NULL OR feature IS NULL") / dsum(store)).quantize(Decimal("1e-6")), "f")


def test_top_drivers_then_one_other_row(store: SQLiteLedger) -> None:
    out = panels.top_drivers(src(store), query(dim="user"))
    assert len(out["rows"]) == 4 and out["rows"][-1]["user"] == "(other)"
    by_user = {u: Decimal(c) for u, c in store.query("SELECT user, dsum(cost) FROM usage_events GROUP BY 1")}
    assert [r["user"] for r in out["rows"][:3]] == sorted(by_user, key=lambda u: -by_user[u])[:3]
    assert all(Decimal(r["cost"]) == by_user[r["user"]] for r in out["rows"][:3])
    assert sum(Decimal(r["cost"]) for r in out["rows"]) == dsum(store)
    prompts = panels.top_drivers(src(store, top_n=10), query(dim="model"))
    assert len(prompts["rows"]) == 3  # no "(other)" row when all fit


def test_unit_economics_per_request_and_session(store: SQLiteLedger) -> None:
    chat = next(r for r in panels.unit_economics(src(store), query())["rows"] if r["feature"] == "chat")
    cost = dsum(store, "feature = 'chat'")
    n = store.query("SELECT count(*) FROM usage_events WHERE feature = 'chat'")[0][0]
    assert Decimal(chat["cost"]) == cost and chat["requests"] == n
    assert Decimal(chat["cost_per_request"]) == (cost / n).quantize(Decimal("1e-12"))
    sessions = store.query(
        "SELECT count(*) FROM (SELECT session_id, feature, min(ts_start) FROM usage_events GROUP BY session_id) WHERE feature = 'chat'"
    )[0][0]
    assert chat["sessions"] == sessions and Decimal(chat["cost_per_session"]) == (cost / sessions).quantize(Decimal("1e-12"))


def test_unit_economics_cost_per_successful_outcome() -> None:
    s = SQLiteLedger(":memory:")
    s.append([UsageEvent(event_id=f"e{i}", request_id=f"r{i}", ts_start=JUNE + i, feature="chat", session_id="s1", cost=Decimal("0.3")) for i in range(4)])
    record_request_outcome(s, "r0", "success", key_id=None, ts=JUNE + 10, feature="chat")
    record_request_outcome(s, "r1", "failure", key_id=None, ts=JUNE + 11, feature="chat")
    record_session_outcome(s, "s1", "accepted", key_id="k", ts=JUNE + 12, feature="chat")
    record_session_outcome(s, "s1", "accepted", key_id="k", ts=JUNE + 13, feature="chat")  # replaces, counts once
    row = panels.unit_economics(src(s), Query(since=JUNE, until=JUNE + DAY, now=JUNE + DAY))["rows"][0]
    assert (row["successes"], row["failures"], row["sessions"]) == (2, 1, 1)
    assert Decimal(row["cost_per_success"]) == Decimal("0.6") and Decimal(row["cost_per_session"]) == Decimal("1.2")
