"""Alert rules with a fake clock: each rule kind fires on the numbers it should
and stays quiet otherwise; alerts are notified once, again only after their
cooldown, resolve when the condition clears, and a restarted engine
remembers what it already said."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from spendgate.alerts import data
from spendgate.alerts.engine import AlertEngine
from spendgate.alerts.schema import AlertsConfig
from spendgate.alerts.state import STATE_SQL
from spendgate.config import Config
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.sqlite import SQLiteLedger

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0
HOUR = 3600.0


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ev(ts: float, cost: str = "0", **kw: Any) -> UsageEvent:
    kw.setdefault("model_used", "gpt-4o")
    kw.setdefault("provider", "openai")
    return UsageEvent(ts_start=ts, ts_end=ts + 0.5, cost=Decimal(cost), list_cost=Decimal(cost), request_id=f"req-{ts}-{cost}", **kw)


@pytest.fixture(params=["cube", "sql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each rule is judged on the analytics cube's figures and on the SQL fallback's."""
    if request.param == "sql":
        monkeypatch.setattr(data, "_cube", lambda: None)
    else:
        assert data._cube() is not None
    store = SQLiteLedger(tmp_path / "ledger.db")
    yield store
    store.close()


def engine(ledger: Any, *rules: dict[str, Any], clock: Clock | None = None, **kw: Any) -> AlertEngine:
    cfg = AlertsConfig.model_validate(
        {"notifiers": {"log": {"kind": "log"}}, "rules": [{"notify": ["log"], **r} for r in rules]}
    )
    return AlertEngine(cfg, ledger, None, kw.pop("budgets", None), clock=clock or Clock(), **kw)


def notified(e: AlertEngine, status: str = "firing") -> list[dict[str, Any]]:
    return [h for h in e.history(1000) if h["event"] == "notified" and h["detail"] == status]


def firing(e: AlertEngine) -> dict[str, dict[str, Any]]:
    return {f"{a['rule']}:{a['subject']}": a for a in e.firing()}


# --- every rule kind --------------------------------------------------------


async def test_daily_spend_fires_above_threshold_for_today_only(ledger: Any) -> None:
    ledger.append([ev(NOW - DAY, "50"), ev(NOW - HOUR, "6.25")])  # yesterday's 50 does not count
    e = engine(ledger, {"name": "daily", "kind": "daily_spend", "above": "10"})
    await e.evaluate(NOW)
    assert e.firing() == []
    ledger.append([ev(NOW - 60, "4.000000001")])
    await e.evaluate(NOW)
    alert = firing(e)["daily:2026-11-18"]
    assert (alert["value"], alert["threshold"]) == ("10.250000001", "10")  # exact money text
    assert "$10.250000001" in alert["message"] and "above $10" in alert["message"]
    assert len(notified(e)) == 1


async def test_daily_spend_filters_on_tags(ledger: Any) -> None:
    ledger.append([ev(NOW - 60, "8", team="search"), ev(NOW - 60, "8", team="ads")])
    e = engine(ledger, {"name": "search-daily", "kind": "daily_spend", "above": "10", "filters": {"team": "search"}})
    await e.evaluate(NOW)
    assert e.firing() == []
    ledger.append([ev(NOW - 30, "3", team="search")])
    await e.evaluate(NOW)
    assert firing(e)["search-daily:2026-11-18"]["value"] == "11"


async def test_daily_spend_vs_trailing_average(ledger: Any) -> None:
    ledger.append([ev(NOW - d * DAY, "1") for d in range(1, 8)])  # 7 days at $1
    ledger.append([ev(NOW - HOUR, "1.5")])
    e = engine(ledger, {"name": "spike", "kind": "daily_spend_vs_average", "factor": "2"})
    await e.evaluate(NOW)
    assert e.firing() == []  # 1.5 < 2 x 1
    ledger.append([ev(NOW - 60, "0.75")])
    await e.evaluate(NOW)
    alert = firing(e)["spike:2026-11-18"]
    assert (alert["value"], Decimal(alert["threshold"])) == ("2.25", Decimal(2))
    # no history at all: nothing to compare with, no alert
    fresh = engine(ledger, {"name": "x", "kind": "daily_spend_vs_average", "factor": "2", "days": 7})
    await fresh.evaluate(NOW + 30 * DAY)
    assert fresh.firing() == []


async def test_single_call_is_judged_per_event(ledger: Any) -> None:
    clock = Clock()
    e = engine(ledger, {"name": "big-call", "kind": "single_call", "above": "0.50", "cooldown_s": 600}, clock=clock)
    e.on_events([ev(NOW, "0.49"), ev(NOW, "0.75", team="search", input_tokens=1200, output_tokens=300)])
    await e.process_pending()
    [alert] = e.firing()
    assert (alert["subject"], alert["value"], alert["threshold"]) == ("gpt-4o", "0.75", "0.50")
    assert "1200 input / 300 output tokens" in alert["message"] and "team search" in alert["message"]
    # another expensive call to the same model within the cooldown: state updated, no new notification
    clock.t = NOW + 60
    e.on_events([ev(NOW + 60, "2")])
    await e.process_pending()
    assert firing(e)["big-call:gpt-4o"]["value"] == "2"
    assert len(notified(e)) == 1
    # another model is another alert
    e.on_events([ev(NOW + 60, "1", model_used="claude-sonnet-4-5")])
    await e.process_pending()
    assert set(firing(e)) == {"big-call:gpt-4o", "big-call:claude-sonnet-4-5"}
    assert len(notified(e)) == 2


async def test_single_call_per_request_and_quiet_resolution(ledger: Any) -> None:
    clock = Clock()
    e = engine(ledger, {"name": "big", "kind": "single_call", "above": "1", "group_by": "request", "cooldown_s": 300}, clock=clock)
    e.on_events([ev(NOW, "3")])
    await e.evaluate(NOW)
    [alert] = e.firing()
    assert alert["subject"] == f"req-{NOW}-3"
    await e.evaluate(NOW + 299)
    assert len(e.firing()) == 1
    await e.evaluate(NOW + 300)  # a per-event alert resolves after a quiet cooldown
    assert e.firing() == []
    assert [h["event"] for h in e.history()][:1] == ["resolved"]


class FakeBudgets:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    async def budget_status(self) -> list[dict[str, Any]]:
        return self.rows


def budget_row(name: str, instance: str, limit: str, used: str, window: str = "month", burst: str = "0") -> dict[str, Any]:
    eff = Decimal(limit) + Decimal(burst)
    scope = {} if instance == "global" else dict(p.split("=", 1) for p in instance.split(","))
    return {
        "name": name, "instance": instance, "scope": scope, "window": window, "limit": Decimal(limit),
        "burst": Decimal(burst), "effective_limit": eff, "spent": Decimal(used), "settled": Decimal(used),
        "reserved": Decimal(0), "remaining": max(eff - Decimal(used), Decimal(0)),
    }


async def test_budget_utilization_fires_per_instance_and_resolves(ledger: Any) -> None:
    budgets = FakeBudgets([budget_row("team-monthly", "team=search", "100", "85"), budget_row("team-monthly", "team=ads", "100", "40")])
    e = engine(
        ledger,
        {"name": "budget-80", "kind": "budget_utilization", "at_percent": 80, "notify_resolved": True},
        budgets=budgets,
    )
    await e.evaluate(NOW)
    [alert] = e.firing()
    assert (alert["subject"], alert["value"], alert["threshold"]) == ("team-monthly/team=search", "85.0", "80")
    assert "$15 left" in alert["message"]
    # a burst grant raises the effective limit: 85 of 120 is under 80 %
    budgets.rows = [budget_row("team-monthly", "team=search", "100", "85", burst="20")]
    await e.evaluate(NOW + 60)
    assert e.firing() == []
    assert len(notified(e, "resolved")) == 1


async def test_forecast_over_amount_and_over_monthly_budget(ledger: Any) -> None:
    mid = datetime(2026, 11, 16, 0, 0, tzinfo=UTC).timestamp()  # half of November gone
    ledger.append([ev(mid - DAY * d, "10", team="search") for d in range(1, 15)])  # $140 so far
    e = engine(
        ledger,
        {"name": "fc-amount", "kind": "forecast_over_budget", "amount": "150", "filters": {"team": "search"}},
        {"name": "fc-big", "kind": "forecast_over_budget", "amount": "100000"},
        {"name": "fc-budget", "kind": "forecast_over_budget", "budget": "team-monthly"},
        budgets=FakeBudgets([budget_row("team-monthly", "team=search", "200", "140")]),
    )
    await e.evaluate(mid)
    alerts = firing(e)
    assert set(alerts) == {"fc-amount:2026-11", "fc-budget:2026-11 team-monthly/team=search"}
    assert Decimal(alerts["fc-amount:2026-11"]["value"]) > Decimal(150)  # on pace for ~$280
    assert alerts["fc-budget:2026-11 team-monthly/team=search"]["threshold"] == "200"


async def test_forecast_needs_a_monthly_budget(ledger: Any, caplog: pytest.LogCaptureFixture) -> None:
    e = engine(
        ledger, {"name": "fc", "kind": "forecast_over_budget", "budget": "daily"},
        budgets=FakeBudgets([budget_row("daily", "global", "10", "1", window="day")]),
    )
    await e.evaluate(NOW)
    assert e.firing() == []
    assert "forecasts need a monthly budget" in caplog.text


async def test_untagged_share(ledger: Any) -> None:
    ledger.append([ev(NOW - HOUR, "1", team="search"), ev(NOW - HOUR, "3"), ev(NOW - 3 * DAY, "100", team="search")])
    e = engine(ledger, {"name": "untagged", "kind": "untagged_share", "above_percent": 50, "window": "24h", "tags": ["team"]})
    await e.evaluate(NOW)
    alert = firing(e)["untagged:team last 24h"]
    assert (alert["value"], alert["threshold"]) == ("75.0", "50")
    assert "($3 of $4)" in alert["message"]
    calm = engine(ledger, {"name": "calm", "kind": "untagged_share", "above_percent": 80})
    await calm.evaluate(NOW)
    assert calm.firing() == []


async def test_unpriced_model_fires_once_per_model_and_again_after_cooldown(ledger: Any) -> None:
    clock = Clock()
    e = engine(ledger, {"name": "unpriced", "kind": "unpriced_model", "cooldown_s": 3600}, clock=clock)
    e.on_events([ev(NOW, model_used="acme-llm", price_status="missing"), ev(NOW, model_used="gpt-4o")])
    e.on_events([ev(NOW, model_used="acme-llm", price_status="missing")])
    await e.process_pending()
    assert [a["subject"] for a in e.firing()] == ["acme-llm"]
    assert len(notified(e)) == 1
    clock.t = NOW + 1800
    e.on_events([ev(clock.t, model_used="acme-llm", price_status="missing")])
    await e.process_pending()
    assert len(notified(e)) == 1  # still within the cooldown
    clock.t = NOW + 3700
    e.on_events([ev(clock.t, model_used="acme-llm", price_status="missing")])
    await e.process_pending()
    assert len(notified(e)) == 2  # re-fired after the cooldown


async def test_cache_hit_rate_drop(ledger: Any) -> None:
    base = [ev(NOW - 2 * DAY + i, cache_status="exact" if i % 2 else "miss") for i in range(100)]  # 50 %
    recent = [ev(NOW - 600 + i, cache_status="exact" if i < 2 else "miss") for i in range(20)]  # 10 %
    ledger.append(base + recent)
    e = engine(ledger, {"name": "cache", "kind": "cache_hit_rate_drop", "window": "1h", "baseline": "7d", "factor": "0.5", "min_requests": 20})
    await e.evaluate(NOW)
    alert = firing(e)["cache:last 1h"]
    assert (alert["value"], alert["threshold"]) == ("10.0", "25.0")
    guarded = engine(ledger, {"name": "g", "kind": "cache_hit_rate_drop", "min_requests": 21})
    await guarded.evaluate(NOW)
    assert guarded.firing() == []  # too few recent lookups to judge


async def test_error_rate_spike_with_min_requests_guard(ledger: Any) -> None:
    ledger.append([ev(NOW - 6 * HOUR + i, status="error" if i == 0 else "ok") for i in range(100)])  # 1 % baseline
    ledger.append([ev(NOW - 300 + i, status="error") for i in range(5)])
    rule = {"name": "errors", "kind": "error_rate_spike", "window": "15m", "baseline": "24h", "above_percent": 10, "factor": 3, "min_requests": 10}
    e = engine(ledger, rule)
    await e.evaluate(NOW)
    assert e.firing() == []  # 5 requests: below min_requests
    ledger.append([ev(NOW - 200 + i, status="ok") for i in range(10)])
    await e.evaluate(NOW)
    alert = firing(e)["errors:last 15m"]
    assert (alert["value"], alert["threshold"]) == ("33.3", "10")
    assert "(5/15 requests)" in alert["message"]


@dataclass
class FakeSlo:
    name: str
    feature: str = "support"
    max_cost_per_outcome: Decimal = Decimal("0.05")
    window: str = "7d"


@dataclass
class FakeStatus:
    name: str
    feature: str
    window: str
    cost: Decimal
    successes: int
    cost_per_outcome: Decimal | None
    target: Decimal
    ok: bool | None


async def test_cost_slo(ledger: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    statuses = [
        FakeStatus("support-cpo", "support", "7d", Decimal("12"), 100, Decimal("0.12"), Decimal("0.05"), False),
        FakeStatus("search-cpo", "search", "7d", Decimal("1"), 100, Decimal("0.01"), Decimal("0.05"), True),
        FakeStatus("new-cpo", "new", "7d", Decimal("1"), 0, None, Decimal("0.05"), None),
    ]
    fake = lambda store, slos, now: statuses  # noqa: E731
    try:
        import spendgate.analytics.slo as slo_module

        monkeypatch.setattr(slo_module, "slo_status", fake)
    except ImportError:
        monkeypatch.setitem(sys.modules, "spendgate.analytics.slo", types.SimpleNamespace(slo_status=fake))
    slos = [FakeSlo("support-cpo"), FakeSlo("search-cpo"), FakeSlo("new-cpo")]
    e = engine(ledger, {"name": "slo", "kind": "cost_slo"}, slos=slos)
    await e.evaluate(NOW)
    [alert] = e.firing()
    assert (alert["subject"], alert["value"], alert["threshold"]) == ("support-cpo", "0.12", "0.05")
    with pytest.raises(ValueError, match="unknown cost SLO"):
        engine(ledger, {"name": "slo2", "kind": "cost_slo", "slos": ["nope"]}, slos=slos)


# --- dedup, cooldown, resolve, persistence ------------------------------------


async def test_notified_once_then_again_only_after_cooldown(ledger: Any) -> None:
    ledger.append([ev(NOW - 60, "20")])
    e = engine(ledger, {"name": "daily", "kind": "daily_spend", "above": "10", "cooldown_s": 1800})
    for t in (NOW, NOW + 60, NOW + 1799):
        await e.evaluate(t)
    assert len(notified(e)) == 1
    assert [h["event"] for h in e.history() if h["event"] == "fired"] == ["fired"]
    await e.evaluate(NOW + 1800)
    assert len(notified(e)) == 2  # a reminder: still firing after the cooldown


async def test_resolves_when_the_condition_clears_and_refires_later(ledger: Any) -> None:
    budgets = FakeBudgets([budget_row("b", "global", "100", "90")])
    e = engine(ledger, {"name": "b90", "kind": "budget_utilization", "at_percent": 90, "cooldown_s": 600, "notify_resolved": True}, budgets=budgets)
    await e.evaluate(NOW)
    budgets.rows = [budget_row("b", "global", "100", "10")]  # a new window
    await e.evaluate(NOW + 60)
    assert e.firing() == []
    [state] = e.states()
    assert (state["status"], state["resolved_at"]) == ("resolved", NOW + 60)
    # fires again soon after: flapping stays quiet within the cooldown ...
    budgets.rows = [budget_row("b", "global", "100", "95")]
    await e.evaluate(NOW + 120)
    assert len(e.firing()) == 1 and len(notified(e)) == 1
    # ... and is announced once the cooldown has passed
    budgets.rows = [budget_row("b", "global", "100", "10")]
    await e.evaluate(NOW + 180)
    budgets.rows = [budget_row("b", "global", "100", "96")]
    await e.evaluate(NOW + 700)
    assert len(notified(e)) == 2
    events = [h["event"] for h in reversed(e.history())]
    assert events.count("fired") == 3 and events.count("resolved") == 2


async def test_a_restarted_engine_does_not_renotify_within_cooldown(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    rule = {"name": "daily", "kind": "daily_spend", "above": "10", "cooldown_s": 3600}
    first = SQLiteLedger(path)
    first.append([ev(NOW - 60, "25")])
    e1 = engine(first, rule)
    await e1.evaluate(NOW)
    assert len(notified(e1)) == 1
    first.close()
    again = SQLiteLedger(path)
    try:
        e2 = engine(again, rule)
        assert [a["subject"] for a in e2.firing()] == ["2026-11-18"]  # state read back
        await e2.evaluate(NOW + 600)
        assert len(notified(e2)) == 1
        await e2.evaluate(NOW + 3600)
        assert len(notified(e2)) == 2
    finally:
        again.close()


async def test_resolved_is_sent_only_for_firings_that_were_announced(tmp_path: Path) -> None:
    """A re-fire silenced by the cooldown resolves quietly, before and after a restart;
    an announced firing (first time, or by a reminder) has its resolution announced."""
    path = tmp_path / "ledger.db"
    rule = {"name": "b90", "kind": "budget_utilization", "at_percent": 90, "cooldown_s": 600, "notify_resolved": True}
    budgets = FakeBudgets([])
    over, under = [budget_row("b", "global", "100", "95")], [budget_row("b", "global", "100", "10")]

    async def at(e: AlertEngine, t: float, rows: list[dict[str, Any]]) -> None:
        budgets.rows = rows
        await e.evaluate(t)

    store = SQLiteLedger(path)
    e = engine(store, rule, budgets=budgets)
    await at(e, NOW, over)  # fires: announced
    await at(e, NOW + 60, under)  # resolves: announced
    assert (len(notified(e)), len(notified(e, "resolved"))) == (1, 1)
    await at(e, NOW + 120, over)  # fires again within the cooldown: silenced ...
    assert len(notified(e)) == 1 and e.firing()[0]["notified_at"] is None
    await at(e, NOW + 180, under)  # ... so its resolution is not announced either
    assert e.firing() == [] and len(notified(e, "resolved")) == 1
    await at(e, NOW + 240, over)  # silenced again; then the gateway restarts
    store.close()

    store = SQLiteLedger(path)
    try:
        e = engine(store, rule, budgets=budgets)
        assert [a["notified_at"] for a in e.firing()] == [None]  # read back: not announced
        await at(e, NOW + 300, under)
        assert e.firing() == [] and (len(notified(e)), len(notified(e, "resolved"))) == (1, 1)
        await at(e, NOW + 700, over)  # past the cooldown: announced, and remembered across a restart
        assert len(notified(e)) == 2
        store.close()
        store = SQLiteLedger(path)
        e = engine(store, rule, budgets=budgets)
        assert [a["notified_at"] for a in e.firing()] == [NOW + 700]
        await at(e, NOW + 760, under)
        assert len(notified(e, "resolved")) == 2
        # a silenced re-fire that lasts past the cooldown is announced by its reminder,
        # so its resolution is announced too
        await at(e, NOW + 800, over)
        assert len(notified(e)) == 2
        await at(e, NOW + 1300, over)
        assert len(notified(e)) == 3
        await at(e, NOW + 1360, under)
        assert len(notified(e, "resolved")) == 3
    finally:
        store.close()


async def test_an_older_ledger_gains_the_notified_at_column(tmp_path: Path) -> None:
    """alert_state written before `notified_at` existed is migrated in place: the column is
    added, announced firings (notified at or after they fired) are marked, silenced ones not."""
    store = SQLiteLedger(tmp_path / "ledger.db")
    try:
        old = STATE_SQL.replace("    notified_at REAL,\n", "")
        assert "notified_at" not in old
        insert = (
            "INSERT INTO alert_state (rule, subject, kind, status, fired_at, last_seen, last_notified, resolved_at, value, threshold, message) "
            "VALUES (?, ?, 'budget_utilization', 'firing', ?, ?, ?, NULL, '95.0', '90', 'm')"
        )
        store.write(
            [
                (old, ()),
                (insert, ("b90", "a/global", NOW, NOW, NOW)),  # announced when it fired
                (insert, ("b90", "b/global", NOW + 100, NOW + 100, NOW)),  # a re-fire silenced by the cooldown
                (insert, ("b90", "c/global", NOW + 100, NOW + 100, None)),  # never notified
            ]
        )
        budgets = FakeBudgets([budget_row(n, "global", "100", "10") for n in "abc"])
        rule = {"name": "b90", "kind": "budget_utilization", "at_percent": 90, "cooldown_s": 600, "notify_resolved": True}
        e = engine(store, rule, budgets=budgets)
        assert {a["subject"]: a["notified_at"] for a in e.firing()} == {"a/global": NOW, "b/global": None, "c/global": None}
        engine(store, rule, budgets=budgets)  # a second start finds the column there
        await e.evaluate(NOW + 200)
        assert e.firing() == []
        assert [h["subject"] for h in notified(e, "resolved")] == ["a/global"]
    finally:
        store.close()


async def test_one_broken_rule_does_not_stop_the_others(ledger: Any, caplog: pytest.LogCaptureFixture) -> None:
    ledger.append([ev(NOW - 60, "20")])

    class Broken:
        async def budget_status(self) -> list[dict[str, Any]]:
            return [{"name": "b", "instance": "global"}]  # rows without figures

    e = engine(
        ledger,
        {"name": "b", "kind": "budget_utilization", "at_percent": 50},
        {"name": "daily", "kind": "daily_spend", "above": "10"},
        budgets=Broken(),
    )
    await e.evaluate(NOW)
    assert [a["rule"] for a in e.firing()] == ["daily"]
    assert "alert rule 'b' could not be evaluated" in caplog.text


async def test_scheduled_task_and_writer_listener(ledger: Any) -> None:
    """start(): rules run on the schedule; per-event findings from the writer thread are sent promptly."""
    from spendgate.ledger.writer import LedgerWriter

    writer = LedgerWriter(ledger, flush_interval_ms=5)
    writer.start()
    cfg = AlertsConfig.model_validate(
        {
            "evaluate_every_s": 0.05,
            "notifiers": {"log": {"kind": "log"}},
            "rules": [
                {"name": "big", "kind": "single_call", "above": "1", "notify": ["log"]},
                {"name": "daily", "kind": "daily_spend", "above": "2", "notify": ["log"]},
            ],
        }
    )
    import asyncio

    e = AlertEngine(cfg, ledger, writer, None)
    e.start()
    try:
        writer.submit(UsageEvent(ts_start=NOW, cost=Decimal("5"), model_used="gpt-4o"))
        writer.submit(UsageEvent(ts_start=__import__("time").time(), cost=Decimal("3"), model_used="gpt-4o"))
        for _ in range(200):
            if {a["rule"] for a in e.firing()} == {"big", "daily"}:
                break
            await asyncio.sleep(0.02)
        assert {a["rule"] for a in e.firing()} == {"big", "daily"}
    finally:
        await e.close()
        writer.close()


# --- config ------------------------------------------------------------------


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValidationError, match=r"unknown notifier\(s\) \['pager'\]"):
        AlertsConfig.model_validate({"notifiers": {"log": {"kind": "log"}}, "rules": [{"name": "r", "kind": "daily_spend", "above": 1, "notify": ["pager"]}]})
    with pytest.raises(ValidationError, match="duplicate alert rule names"):
        AlertsConfig.model_validate({"rules": [{"name": "r", "kind": "unpriced_model"}, {"name": "r", "kind": "unpriced_model"}]})
    with pytest.raises(ValidationError, match="either budget"):
        AlertsConfig.model_validate({"rules": [{"name": "r", "kind": "forecast_over_budget"}]})
    with pytest.raises(ValidationError, match="unknown filter dimension"):
        AlertsConfig.model_validate({"rules": [{"name": "r", "kind": "daily_spend", "above": 1, "filters": {"colour": "x"}}]})
    with pytest.raises(ValidationError, match="duration"):
        AlertsConfig.model_validate({"rules": [{"name": "r", "kind": "error_rate_spike", "window": "soon"}]})
    with pytest.raises(ValidationError):
        AlertsConfig.model_validate({"rules": [{"name": "r", "kind": "daily_spendd", "above": 1}]})
    # the section sits in the gateway's config
    cfg = Config.model_validate({"alerts": {"rules": [{"name": "r", "kind": "unpriced_model"}]}})
    assert cfg.alerts.rules[0].kind == "unpriced_model"
    assert Config.model_validate({}).alerts.rules == []


def test_rules_naming_a_budget_are_checked_against_the_config(ledger: Any) -> None:
    cfg = Config.model_validate(
        {"budgets": [{"name": "daily", "window": {"period": "day"}, "limit": "10"}, {"name": "monthly", "window": {"period": "month"}, "limit": "100"}]}
    )
    budgets = FakeBudgets([])
    with pytest.raises(ValueError, match="unknown budget 'nope'"):
        engine(ledger, {"name": "b", "kind": "budget_utilization", "at_percent": 80, "budget": "nope"}, budgets=budgets, budget_config=cfg.budgets)
    with pytest.raises(ValueError, match="not monthly"):
        engine(ledger, {"name": "f", "kind": "forecast_over_budget", "budget": "daily"}, budgets=budgets, budget_config=cfg.budgets)
    engine(ledger, {"name": "f", "kind": "forecast_over_budget", "budget": "monthly"}, budgets=budgets, budget_config=cfg.budgets)
