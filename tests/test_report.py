"""`build_report`, its renderers, time parsing and the `spendgate report` command."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate import cli
from spendgate.analytics.report import (
    build_report,
    format_money,
    parse_by,
    render_csv,
    render_json,
    render_table,
)
from spendgate.analytics.since import parse_time
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.sqlite import EXACT, SQLiteLedger

T0 = datetime(2024, 5, 1, tzinfo=UTC).timestamp()
DAY = 86400.0


def exact_sum(values) -> Decimal:
    total = Decimal(0)
    for v in values:
        total = EXACT.add(total, v)
    return total


def awkward_cost(rng: random.Random) -> Decimal:
    """Costs with many digits, the kind float sums get wrong."""
    kind = rng.randrange(4)
    if kind == 0:
        return Decimal("0.000000123456789") * rng.randrange(1, 10_000)
    if kind == 1:
        return Decimal(rng.randrange(1, 10**12)).scaleb(-rng.randrange(6, 24))
    if kind == 2:
        return Decimal("0.1") + Decimal("0.2")
    return Decimal(rng.randrange(0, 10**6)).scaleb(-2) + Decimal("1E-21")


def make_events(n: int, seed: int = 7) -> list[UsageEvent]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        e = UsageEvent(
            request_id=f"r{i}",
            ts_start=T0 + rng.uniform(0, 10 * DAY),
            provider=rng.choice(["openai", "anthropic"]),
            model_used=rng.choice(["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5"]),
            team=rng.choice(["search", "support", "growth", None]),
            feature=rng.choice(["chat", "summarize", None]),
            key_id=rng.choice(["k1", "k2"]),
            status=rng.choice(["ok"] * 9 + ["error"]),
            input_tokens=rng.randrange(0, 5000),
            output_tokens=rng.randrange(0, 800),
            cache_read_tokens=rng.randrange(0, 100),
            cost=awkward_cost(rng),
            list_cost=awkward_cost(rng),
            saved=awkward_cost(rng),
        )
        if rng.random() < 0.6:
            e.tags["customer"] = rng.choice(["acme", "globex", "initech"])
        e.saved_by = rng.choice([None, "cache", "prompt_cache", "routing", "prompt_cache,routing"])
        e.route_reason = rng.choice(["direct"] * 6 + ["policy", "cascade", "cascade-escalation", "failover"])
        events.append(e)
    return events


def routing_saved(events) -> Decimal:
    return exact_sum(e.saved for e in events if "routing" in (e.saved_by or "").split(","))


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("report") / "ledger.db"
    events = make_events(3000)
    with SQLiteLedger(path) as store:
        for start in range(0, len(events), 500):
            store.append(events[start : start + 500])
    store = SQLiteLedger(path)
    yield store, events, path
    store.close()


def check_totals(report, events) -> None:
    """The total equals the sum of the rows and the exact sum of the events."""
    for money in ("cost", "list_cost", "saved"):
        rows = exact_sum(getattr(r, money) for r in report.rows)
        expected = exact_sum(getattr(e, money) for e in events)
        assert getattr(report.total, money) == rows == expected, money
    assert report.total.routing_saved == exact_sum(r.routing_saved for r in report.rows) == routing_saved(events)
    # attempts sharing a request_id are one request; an event without one stands alone
    assert report.total.distinct_requests == len({e.request_id or e.event_id for e in events})
    for count in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
        assert getattr(report.total, count) == sum(getattr(r, count) for r in report.rows) == sum(
            getattr(e, count) for e in events
        )
    assert report.total.requests == sum(r.requests for r in report.rows) == len(events)
    assert report.total.errors == sum(r.errors for r in report.rows) == sum(e.status == "error" for e in events)


@pytest.mark.parametrize(
    "by",
    [["team", "model"], ["team"], ["model", "provider", "key_id"], ["day"], ["tag:customer", "feature"], []],
)
def test_totals_are_exact_for_every_grouping(populated, by):
    store, events, _ = populated
    report = build_report(store, None, None, by)
    check_totals(report, events)
    costs = [r.cost for r in report.rows]
    assert costs == sorted(costs, reverse=True)


def test_group_values_match_the_events(populated):
    store, events, _ = populated
    report = build_report(store, None, None, ["team", "model"])
    expected: dict[tuple, Decimal] = {}
    for e in events:
        key = (e.team, e.model_used)
        expected[key] = EXACT.add(expected.get(key, Decimal(0)), e.cost)
    got = {(r.group["team"], r.group["model"]): r.cost for r in report.rows}
    assert got == expected


def test_group_by_free_form_tag(populated):
    store, events, _ = populated
    report = build_report(store, None, None, ["tag:customer"])
    got = {r.group["tag:customer"]: (r.requests, r.cost) for r in report.rows}
    for customer in ("acme", "globex", "initech", None):
        mine = [e for e in events if e.tags.get("customer") == customer]
        assert got[customer] == (len(mine), exact_sum(e.cost for e in mine))
    # tag:team reads the dedicated column, same as team
    assert {r.group["tag:team"]: r.cost for r in build_report(store, None, None, ["tag:team"]).rows} == {
        r.group["team"]: r.cost for r in build_report(store, None, None, ["team"]).rows
    }


def test_since_and_until_filter_half_open(populated):
    store, events, _ = populated
    since, until = T0 + 2 * DAY, T0 + 5 * DAY
    report = build_report(store, since, until, ["team"])
    window = [e for e in events if since <= e.ts_start < until]
    assert 0 < len(window) < len(events)
    check_totals(report, window)
    assert build_report(store, T0 + 100 * DAY, None, ["team"]).rows == []
    # day groups use the UTC date of ts_start
    days = {r.group["day"] for r in build_report(store, since, until, ["day"]).rows}
    assert days == {"2024-05-03", "2024-05-04", "2024-05-05"}


def test_untagged_spend(populated):
    store, events, _ = populated
    report = build_report(store, None, None, ["model", "feature", "tag:customer"])
    untagged = {u.dimension: (u.requests, u.cost) for u in report.untagged}
    assert set(untagged) == {"team", "feature", "tag:customer"}
    for dim, pick in (
        ("team", lambda e: e.team),
        ("feature", lambda e: e.feature),
        ("tag:customer", lambda e: e.tags.get("customer")),
    ):
        mine = [e for e in events if pick(e) is None]
        assert untagged[dim] == (len(mine), exact_sum(e.cost for e in mine)), dim
    table = render_table(build_report(store, None, None, ["team"]))
    assert "(untagged)" in table
    assert "no team:" in table


def test_missing_prices_are_listed_loudly(tmp_path: Path):
    with SQLiteLedger(tmp_path / "l.db") as store:
        store.append(
            [
                UsageEvent(ts_start=T0, provider="openai", model_used="gpt-9", price_status="missing",
                           input_tokens=100, output_tokens=5, team="a"),
                UsageEvent(ts_start=T0, provider="openai", model_used="gpt-9", price_status="missing",
                           input_tokens=10, output_tokens=1, team="a"),
                UsageEvent(ts_start=T0, provider="acme", model_used="x-1", price_status="missing",
                           input_tokens=7, team="b"),
                UsageEvent(ts_start=T0, provider="openai", model_used="gpt-4o", cost=Decimal("1.5"), team="b"),
            ]
        )
        report = build_report(store, None, None, ["team"])
        assert [(m.provider, m.model, m.events, m.tokens) for m in report.missing_prices] == [
            ("openai", "gpt-9", 2, 116),
            ("acme", "x-1", 1, 7),
        ]
        table = render_table(report)
        assert "MISSING PRICES" in table
        assert "gpt-9" in table and "x-1" in table
        assert table.index("TOTAL") < table.index("MISSING PRICES")
        priced = build_report(store, None, None, ["team"])
        priced.missing_prices = []
        assert "MISSING" not in render_table(priced)


def test_csv_round_trip_is_exact(populated):
    store, events, _ = populated
    report = build_report(store, None, None, ["team", "model"])
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert len(rows) == len(report.rows)
    assert exact_sum(Decimal(r["cost"]) for r in rows) == exact_sum(e.cost for e in events)
    assert exact_sum(Decimal(r["saved"]) for r in rows) == exact_sum(e.saved for e in events)
    assert sum(int(r["requests"]) for r in rows) == len(events)
    assert "(untagged)" in {r["team"] for r in rows}
    assert all("E" not in r["cost"] for r in rows)  # plain decimals, not scientific notation


def test_json_round_trip_is_exact(populated):
    store, events, _ = populated
    report = build_report(store, T0, T0 + 10 * DAY + 1, ["team", "tag:customer"])
    data = json.loads(render_json(report))
    assert isinstance(data["total"]["cost"], str)
    assert Decimal(data["total"]["cost"]) == exact_sum(e.cost for e in events)
    assert exact_sum(Decimal(r["cost"]) for r in data["rows"]) == Decimal(data["total"]["cost"])
    assert data["by"] == ["team", "tag:customer"]
    assert data["since"] == "2024-05-01T00:00:00Z"
    assert None in {r["team"] for r in data["rows"]}  # machine-readable: null, not a label
    assert {u["dimension"] for u in data["untagged"]} == {"team", "tag:customer"}


def test_table_shows_every_digit(tmp_path: Path):
    with SQLiteLedger(tmp_path / "l.db") as store:
        store.append(
            [
                UsageEvent(ts_start=T0, team="a", cost=Decimal("12.345678")),
                UsageEvent(ts_start=T0, team="b", cost=Decimal("0.000000123456789")),
            ]
        )
        table = render_table(build_report(store, None, None, ["team"]))
    assert "$12.345678123456789" in table  # the total, to the last digit
    assert "$0.000000123456789" in table
    assert "$12.345678000000000" in table  # padded (not rounded) to line up


def test_format_money_never_rounds():
    assert format_money(Decimal("1234.5")) == "$1,234.50"
    assert format_money(Decimal("0.000000123456789")) == "$0.000000123456789"
    assert format_money(Decimal("3"), 6) == "$3.000000"
    assert format_money(Decimal("0.1234567"), 2) == "$0.1234567"
    assert format_money(Decimal("-0.5")) == "-$0.50"
    assert format_money(Decimal("1E-9")) == "$0.000000001"


def test_unknown_dimension_is_refused(populated):
    store, _, _ = populated
    with pytest.raises(ValueError, match="unknown group-by dimension"):
        build_report(store, None, None, ["colour"])
    with pytest.raises(ValueError):
        parse_by('tag:bad"name')
    assert parse_by("team, model,team") == ["team", "model"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", None]),
            st.sampled_from(["m1", "m2"]),
            st.decimals(min_value=0, max_value=Decimal("1000"), places=20, allow_nan=False),
        ),
        max_size=60,
    )
)
def test_report_total_property(items):
    events = [
        UsageEvent(ts_start=T0 + i, team=team, model_used=model, cost=cost)
        for i, (team, model, cost) in enumerate(items)
    ]
    with SQLiteLedger(":memory:") as store:
        store.append(events)
        report = build_report(store, None, None, ["team", "model"])
    check_totals(report, events)
    assert len(report.rows) == len({(e.team, e.model_used) for e in events})


# --- routing figures ------------------------------------------------------


def routed_ledger() -> list[UsageEvent]:
    """Nine requests, one event per upstream attempt, the way the gateway writes them."""

    def ev(rid: str, n: int, reason: str, model: str, saved: str = "0", saved_by: str | None = None, **kw) -> UsageEvent:
        return UsageEvent(request_id=rid, attempt=n, ts_start=T0 + n, route_reason=reason, model_used=model,
                          team=kw.pop("team", "support"), cost=Decimal(kw.pop("cost", "0.001")), saved=Decimal(saved),
                          saved_by=saved_by, **kw)  # fmt: skip

    return [
        ev("r1", 1, "direct", "gpt-4.1"),
        # policy: tier:small served it; saved against the flagship baseline
        ev("r2", 1, "policy", "gpt-4o-mini", "0.000123456789012345678", "routing"),
        # cascade: the cheap step failed its checks (paid, saved minus its cost), the flagship answered
        ev("r3", 1, "cascade", "gpt-4o-mini", "-0.000000333333333333333", "routing", cost="0.000000333333333333333"),
        ev("r3", 2, "cascade-escalation", "gpt-4.1"),
        # cascade: the cheap step passed; the provider's prompt cache saved on it too
        ev("r4", 1, "cascade", "gpt-4o-mini", "0.0107", "prompt_cache,routing", team="search"),
        # cascade, cheap step skipped by the learned check: the first attempt is the escalation
        ev("r5", 1, "cascade-escalation", "gpt-4.1", team="search"),
        # direct, first deployment failed, another took it
        ev("r6", 1, "direct", "gpt-4.1", status="error"),
        ev("r6", 2, "failover", "gpt-4.1"),
        # policy, retried, then failed over; the answer saved against the baseline
        ev("r7", 1, "policy", "gpt-4o-mini", status="error"),
        ev("r7", 2, "retry", "gpt-4o-mini", status="error"),
        ev("r7", 3, "failover", "claude-haiku-4-5", "0.9", "routing"),
        # saved by something else: not routing's
        ev("r8", 1, "direct", "gpt-4.1", "0.5", "prompt_cache"),
        ev("r8b", 1, "direct", "gpt-4.1", "0.25", "cache"),
        # ingested from elsewhere: no request id, a request of its own
        ev("", 1, "direct", "gpt-4.1"),
    ]


def test_routing_figures_are_per_request_and_exact(tmp_path: Path):
    events = routed_ledger()
    with SQLiteLedger(tmp_path / "l.db") as store:
        store.append(events)
        report = build_report(store, None, None, [])
        t = report.total
        assert t.requests == len(events) == 14  # events, as before
        assert t.distinct_requests == 10
        assert (t.routed_requests, t.cascade_requests, t.escalated_requests, t.failover_requests) == (5, 3, 2, 2)
        assert t.escalation_rate == Decimal(2) / Decimal(3)
        assert t.failover_rate == Decimal(2) / Decimal(10)
        expected = (Decimal("0.000123456789012345678") - Decimal("0.000000333333333333333")
                    + Decimal("0.0107") + Decimal("0.9"))  # fmt: skip
        assert t.routing_saved == expected == Decimal("0.910823123455679012345")  # to the last digit
        assert t.saved == expected + Decimal("0.75")
        assert report.rows[0].routing_counts() == t.routing_counts()

        data = json.loads(render_json(report))["total"]
        assert data["routing_saved"] == "0.910823123455679012345"
        assert Decimal(data["routing_saved"]) == exact_sum(
            e.saved for e in events if "routing" in (e.saved_by or "").split(",")
        )
        assert (data["distinct_requests"], data["routed_requests"], data["cascade_requests"]) == (10, 5, 3)
        assert (data["escalated_requests"], data["failover_requests"]) == (2, 2)
        assert data["escalation_rate"] == 0.6667 and data["failover_rate"] == 0.2

        # per group, a request carries the flags of the whole request
        by_model = {r.group["model"]: r for r in build_report(store, None, None, ["model"]).rows}
        mini = by_model["gpt-4o-mini"]  # r2, r3, r4, r7
        assert (mini.distinct_requests, mini.routed_requests, mini.cascade_requests, mini.escalated_requests) == (4, 4, 2, 1)
        assert mini.escalation_rate == Decimal("0.5") and mini.failover_requests == 1
        flagship = by_model["gpt-4.1"]  # r1, r3, r5, r6, r8, r8b, ""
        assert (flagship.distinct_requests, flagship.cascade_requests, flagship.escalated_requests) == (7, 2, 2)
        assert flagship.escalation_rate == 1 and flagship.failover_rate == Decimal(1) / Decimal(7)
        assert by_model["claude-haiku-4-5"].routing_saved == Decimal("0.9")
        rows = build_report(store, None, None, ["team", "model"]).rows
        assert exact_sum(r.routing_saved for r in rows) == expected

        # route_reason counts attempts, as a dimension always has
        by_reason = {r.group["route_reason"]: r.requests for r in build_report(store, None, None, ["route_reason"]).rows}
        assert by_reason == {"direct": 5, "policy": 2, "cascade": 2, "cascade-escalation": 2, "failover": 2, "retry": 1}

        table = render_table(build_report(store, None, None, ["team"]))
        header = next(line for line in table.splitlines() if line.startswith("team"))
        assert header.split()[-6:] == ["routed", "escalated", "failed", "over", "routing", "saved"]
        total = next(line for line in table.splitlines() if line.startswith("TOTAL"))
        assert total.split()[-4:] == ["5", "66.7%", "20.0%", "$0.910823123455679012345"]
        assert ("routing: 5 of 10 requests routed by policy or cascade; 66.7% escalated (2 of 3 cascade requests); "
                "20.0% failed over (2 requests); saved $0.910823123455679012345 against the baseline") in table  # fmt: skip

        csv_rows = list(csv.DictReader(io.StringIO(render_csv(build_report(store, None, None, ["team"])))))
        assert exact_sum(Decimal(r["routing_saved"]) for r in csv_rows) == expected
        assert sum(int(r["escalated_requests"]) for r in csv_rows) == 2


def test_routing_window_is_the_report_window(tmp_path: Path):
    events = routed_ledger()
    with SQLiteLedger(tmp_path / "l.db") as store:
        store.append(events)
        # attempts 2 and 3 only: r3's escalation, r6's and r7's failovers, r7's retry
        t = build_report(store, T0 + 2, None, ["model"]).total
        assert (t.distinct_requests, t.routed_requests, t.cascade_requests, t.escalated_requests, t.failover_requests) == (3, 1, 1, 1, 2)
        assert t.routing_saved == Decimal("0.9")


def test_routing_rates_with_zero_denominators(tmp_path: Path):
    with SQLiteLedger(tmp_path / "l.db") as store:
        empty = build_report(store, None, None, ["team"])
        assert empty.total.escalation_rate is None and empty.total.failover_rate is None
        data = json.loads(render_json(empty))["total"]
        assert data["escalation_rate"] is None and data["failover_rate"] is None and data["routing_saved"] == "0"

        store.append([UsageEvent(request_id="a", ts_start=T0, team="x", cost=Decimal("0.5")),
                      UsageEvent(request_id="b", ts_start=T0, team="x", cost=Decimal("0.25"), route_reason="policy")])  # fmt: skip
        t = build_report(store, None, None, ["team"]).total
        assert t.escalation_rate is None  # no cascade requests: no rate, not 0%
        assert t.failover_rate == 0 and t.routed_requests == 1
        data = json.loads(render_json(build_report(store, None, None, ["team"])))["total"]
        assert data["escalation_rate"] is None and data["failover_rate"] == 0.0
        assert "- escalated" not in render_table(build_report(store, None, None, ["team"]))
        assert "no cascade requests" in render_table(build_report(store, None, None, ["team"]))


def test_table_without_routing_is_unchanged(populated, tmp_path: Path):
    with SQLiteLedger(tmp_path / "l.db") as store:
        store.append([UsageEvent(request_id="a", ts_start=T0, team="x", cost=Decimal("0.5"), saved=Decimal("0.1"), saved_by="cache")])
        table = render_table(build_report(store, None, None, ["team"]))
    header = next(line for line in table.splitlines() if line.startswith("team"))
    assert header.endswith("saved  cache hits")
    assert "routed" not in table and "routing:" not in table


# --- time parsing ---------------------------------------------------------

NOW = datetime(2024, 5, 10, 15, 30, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("30d", NOW - 30 * DAY),
        ("24h", NOW - DAY),
        ("90m", NOW - 90 * 60),
        ("2w", NOW - 14 * DAY),
        ("1.5h", NOW - 5400),
        ("45s", NOW - 45),
        ("now", NOW),
        ("today", datetime(2024, 5, 10, tzinfo=UTC).timestamp()),
        ("yesterday", datetime(2024, 5, 9, tzinfo=UTC).timestamp()),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC).timestamp()),
        ("2024-05-01T12:30", datetime(2024, 5, 1, 12, 30, tzinfo=UTC).timestamp()),
        ("2024-05-01T12:30Z", datetime(2024, 5, 1, 12, 30, tzinfo=UTC).timestamp()),
        ("2024-05-01 12:30:00+02:00", datetime(2024, 5, 1, 10, 30, tzinfo=UTC).timestamp()),
        ("1714521600", 1714521600.0),
    ],
)
def test_parse_time(text, expected):
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["30x", "yesteryear", "2024-13-01", "", "-5d"])
def test_parse_time_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_time(text, now=NOW)


# --- the command ----------------------------------------------------------


@pytest.fixture
def report_cli(monkeypatch: pytest.MonkeyPatch):
    # Only the report subcommand: the others belong to other modules and may
    # need extra dependencies; what is tested here is report's own wiring.
    monkeypatch.setattr(cli, "COMMANDS", {"report": cli.COMMANDS["report"]})
    return cli.main


def test_cli_report_json(populated, report_cli, capsys):
    store, events, path = populated
    assert report_cli(["report", "--ledger", f"sqlite:///{path}", "--format", "json", "--by", "team,model"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert Decimal(data["total"]["cost"]) == exact_sum(e.cost for e in events)
    assert data["total"]["requests"] == len(events)
    assert exact_sum(Decimal(r["cost"]) for r in data["rows"]) == Decimal(data["total"]["cost"])


def test_cli_report_table_from_config_with_window(populated, report_cli, capsys, tmp_path: Path):
    store, events, path = populated
    config = tmp_path / "spendgate.yaml"
    config.write_text(f"ledger:\n  url: sqlite:///{path}\n")
    code = report_cli(
        ["report", "--config", str(config), "--since", "2024-05-03", "--until", "2024-05-06", "--by", "team"]
    )
    assert code == 0
    out = capsys.readouterr().out
    window = [e for e in events if T0 + 2 * DAY <= e.ts_start < T0 + 5 * DAY]
    total_line = next(line for line in out.splitlines() if line.startswith("TOTAL"))
    cells = total_line.split()
    money = [Decimal(c.replace("$", "").replace(",", "")) for c in cells if c.startswith("$")]
    assert money[0] == exact_sum(e.cost for e in window)  # cost, every digit
    assert money[2] == exact_sum(e.saved for e in window)
    assert cells[1] == f"{len(window):,}"
    assert "untagged spend:" in out
    assert "2024-05-03T00:00:00Z .. 2024-05-06T00:00:00Z" in out


def test_cli_report_csv_by_tag(populated, report_cli, capsys):
    store, events, path = populated
    assert report_cli(["report", "--ledger", str(path), "--format", "csv", "--by", "tag:customer"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["tag:customer"] for r in rows} == {"acme", "globex", "initech", "(untagged)"}
    assert exact_sum(Decimal(r["cost"]) for r in rows) == exact_sum(e.cost for e in events)


def test_cli_report_errors(report_cli, capsys, tmp_path: Path):
    assert report_cli(["report", "--ledger", str(tmp_path / "nope.db")]) == 1
    assert "no ledger" in capsys.readouterr().err
    assert report_cli(["report", "--ledger", "postgresql://h/db"]) == 2
    assert "PostgreSQL" in capsys.readouterr().err
    db = tmp_path / "l.db"
    SQLiteLedger(db).close()
    assert report_cli(["report", "--ledger", str(db), "--since", "soon"]) == 2
    assert report_cli(["report", "--ledger", str(db), "--by", "colour"]) == 2
    assert report_cli(["report", "--ledger", str(db), "--since", "1d", "--until", "2d"]) == 2
    capsys.readouterr()
    assert report_cli(["report", "--ledger", str(db)]) == 0
    assert "(no events in this window)" in capsys.readouterr().out
