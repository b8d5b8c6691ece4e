"""cube.query: the planner's answer equals the events', and it reads rollups when it can."""

from __future__ import annotations

from decimal import Decimal

import pytest

from spendgate.analytics import cube
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.sqlite import SQLiteLedger

T0 = 1_717_200_000  # 2024-06-01 00:00 UTC


@pytest.fixture()
def store() -> SQLiteLedger:
    s = SQLiteLedger(":memory:")
    s.append(
        [
            UsageEvent(
                event_id=f"e{i}",
                ts_start=T0 + i * 1111.1,
                team=["a", "b", None][i % 3],
                feature=["chat", "search"][i % 2],
                user=f"u{i % 4}",
                model_used=["big", "small"][i % 2],
                session_id=f"s{i % 10}",
                cost=Decimal("0.000123") * (i + 1),
                status="error" if i % 17 == 0 else "ok",
                cache_status=["miss", "exact", "bypass"][i % 3],
                saved=Decimal("0.5") if i % 3 == 1 else Decimal(0),
                saved_by="cache" if i % 3 == 1 else None,
            )
            for i in range(500)
        ]
    )
    return s


def test_totals_match_the_ledger_sum(store: SQLiteLedger) -> None:
    res = cube.query(store, since=None, until=None)
    (cost,) = store.query("SELECT dsum(cost) FROM usage_events")[0]
    assert res.rows[0]["cost"] == Decimal(cost)
    assert res.rows[0]["requests"] == 500
    assert res.source.startswith("rollup:")


def test_ragged_window_reads_rollups_and_events_and_agrees(store: SQLiteLedger) -> None:
    since, until = T0 + 5000.5, T0 + 5 * 86400 + 123.25
    res = cube.query(store, since=since, until=until, group_by=("team",), bucket="day")
    ref = cube.events_query(store, since=since, until=until, group_by=("team",), bucket="day")
    assert res.rows == ref.rows
    assert res.source == "rollup:day_team+hour_team"
    assert res.parts[0].startswith("events[") and res.parts[-1].startswith("events[")


def test_untagged_filter_and_group(store: SQLiteLedger) -> None:
    res = cube.query(store, since=None, until=None, group_by=("team",), filters={"team": None})
    assert [r["team"] for r in res.rows] == [None]
    (n,) = store.query("SELECT count(*) FROM usage_events WHERE team IS NULL")[0]
    assert res.rows[0]["requests"] == n


def test_uncovered_dimension_falls_back_to_events(store: SQLiteLedger) -> None:
    res = cube.query(store, since=None, until=None, group_by=("session_id",), filters={"status": "error"})
    assert res.source == "events"
    assert sum(r["errors"] for r in res.rows) == store.query("SELECT count(*) FROM usage_events WHERE status='error'")[0][0]


def test_cache_saved_metric(store: SQLiteLedger) -> None:
    t = cube.query(store, since=None, until=None).rows[0]
    assert t["cache_saved"] == Decimal("0.5") * 167
    assert t["cache_hits"] == 167 and t["cache_misses"] == 167


def test_bad_input_is_refused(store: SQLiteLedger) -> None:
    with pytest.raises(ValueError, match="unknown dimension"):
        cube.query(store, since=None, until=None, group_by=("colour",))
    with pytest.raises(ValueError, match="bucket"):
        cube.query(store, since=None, until=None, bucket="week")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="twice"):
        cube.query(store, since=None, until=None, group_by=("team", "team"))
    assert cube.query(store, since=T0 + 10, until=T0).rows == []


def test_sessions_counted_once_on_their_first_day(store: SQLiteLedger) -> None:
    counts, source = cube.sessions_by_feature(store, T0, T0 + 86400)
    assert source == "rollup:sessions"
    assert sum(counts.values()) == 10  # s0..s9 all start in the first hours
    later, _ = cube.sessions_by_feature(store, T0 + 86400, None)
    assert later == {}
    # an event arriving late that moves s3's first event earlier
    store.append([UsageEvent(event_id="late", ts_start=T0 - 86400 * 2, session_id="s3", feature="chat")])
    assert cube.sessions_by_feature(store, T0, T0 + 86400)[0].get("chat", 0) + cube.sessions_by_feature(store, T0, T0 + 86400)[0].get("search", 0) == 9
    assert cube.sessions_by_feature(store, T0 - 3 * 86400, T0)[0] == {"chat": 1}


@pytest.mark.parametrize(
    ("group_by", "filters", "bucket"),
    [
        (("user",), {"user": ("u1", "u3")}, "day"),
        (("team",), {"team": ["a", None]}, "hour"),
        ((), {"user": frozenset({"u0", "nobody"}), "team": "a"}, None),
        (("model",), {"model": ()}, "day"),  # an empty list matches nothing
        (("feature",), {"team": (None,)}, None),
    ],
)
def test_in_filters_equal_the_events(store: SQLiteLedger, group_by, filters, bucket) -> None:
    since, until = T0 + 4321.5, T0 + 4 * 86400 + 99.75
    res = cube.query(store, since=since, until=until, group_by=group_by, filters=filters, bucket=bucket)
    assert res.rows == cube.events_query(store, since=since, until=until, group_by=group_by, filters=filters, bucket=bucket).rows
    if filters.get("model") == ():
        assert res.rows == []
    else:
        assert res.rows and res.source.startswith("rollup:")


def test_top_n_series_plus_other_add_up_to_the_total(store: SQLiteLedger) -> None:
    """The dashboard's top-N stacking: ranking, IN-filtered series, and 'other' = total - top N."""
    since, until = T0 + 1000.5, T0 + 5 * 86400
    ranked = cube.query(store, since=since, until=until, group_by=("user",)).rows
    top = tuple(r["user"] for r in sorted(ranked, key=lambda r: -r["cost"])[:2])
    series = cube.query(store, since=since, until=until, group_by=("user",), filters={"user": top}, bucket="day").rows
    assert {r["user"] for r in series} == set(top)
    everything = cube.query(store, since=since, until=until).rows[0]["cost"]
    other = everything - sum(r["cost"] for r in series)
    (raw_other,) = store.query(
        f"SELECT dsum(cost) FROM usage_events WHERE ts_start >= ? AND ts_start < ? AND user NOT IN ({', '.join('?' * len(top))})",
        (since, until, *top),
    )[0]
    assert other == Decimal(raw_other)


def test_bad_filter_values_are_refused(store: SQLiteLedger) -> None:
    with pytest.raises(ValueError, match="strings or None"):
        cube.query(store, since=None, until=None, filters={"user": ("u1", 3)})
    with pytest.raises(ValueError, match="a list of them"):
        cube.query(store, since=None, until=None, filters={"user": 3})


def test_some_metrics_only_and_weeks_for_rankings(store: SQLiteLedger) -> None:
    """A ranking asks for cost only (plus requests); a 30-day window reads whole weeks of day-level users."""
    since, until = T0 + 777.5, T0 + 30 * 86400 + 0.25
    part = cube.query(store, since=since, until=until, group_by=("user",), metrics=("cost",))
    full = cube.query(store, since=since, until=until, group_by=("user",))
    assert [set(r) for r in part.rows] == [{"user", "requests", "cost"}] * len(full.rows)
    assert [(r["user"], r["cost"], r["requests"]) for r in part.rows] == [(r["user"], r["cost"], r["requests"]) for r in full.rows]
    assert full.rows == cube.events_query(store, since=since, until=until, group_by=("user",)).rows
    assert any(p.startswith("week_user[") for p in full.parts)
    # a plain total reads the small day rollup, not 5,000 users' weekly rows
    assert not any(p.startswith("week_") for p in cube.query(store, since=since, until=until).parts)
    # a monthly series never reads weeks (they straddle months)
    monthly = cube.query(store, since=since, until=until, group_by=("user",), bucket="month")
    assert not any(p.startswith("week_") for p in monthly.parts)
    assert monthly.rows == cube.events_query(store, since=since, until=until, group_by=("user",), bucket="month").rows
    with pytest.raises(ValueError, match="unknown metric"):
        cube.query(store, since=None, until=None, metrics=("colour",))


def test_top_values_rank_by_cost_from_rollups_only(store: SQLiteLedger) -> None:
    since, until = T0 + 1234.5, T0 + 5 * 86400 + 17.0
    top, rest = cube.top_values(store, since=since, until=until, dim="user", n=2)
    widened = cube.events_query(store, since=T0, until=T0 + 6 * 86400, group_by=("user",)).rows
    want = [r["user"] for r in sorted(widened, key=lambda r: (-r["cost"], r["user"]))]
    assert (top, rest) == (want[:2], 2)
    # team: hourly rollups, so the window is widened to whole hours only
    top, rest = cube.top_values(store, since=since, until=until, dim="team", n=5, filters={"feature": "chat"})
    hours = cube.events_query(store, since=T0, until=T0 + 5 * 86400 + 3600, group_by=("team",), filters={"feature": "chat"}).rows
    assert top == [r["team"] for r in sorted(hours, key=lambda r: (-r["cost"], r["team"] is None, str(r["team"])))] and rest == 0


def test_free_form_tags_filter_and_group_from_the_events() -> None:
    """Tags outside the dedicated columns (`tags`) are dimensions too: `tag:NAME`."""
    s = SQLiteLedger(":memory:")
    s.append(
        [
            UsageEvent(event_id="g", ts_start=T0, cost=Decimal("0.1"), tags={"tier": "gold"}),
            UsageEvent(event_id="g2", ts_start=T0 + 60, cost=Decimal("0.25"), tags={"tier": "gold", "x": "y"}),
            UsageEvent(event_id="s", ts_start=T0 + 120, cost=Decimal("0.05"), tags={"tier": "silver"}),
            UsageEvent(event_id="n", ts_start=T0 + 180, cost=Decimal("1")),
        ]
    )
    got = cube.query(s, since=T0, until=T0 + 86400, group_by=("tag:tier",))
    assert got.source == "events"
    assert {r["tag:tier"]: r["cost"] for r in got.rows} == {"gold": Decimal("0.35"), "silver": Decimal("0.05"), None: Decimal("1")}
    gold = cube.query(s, since=T0, until=T0 + 86400, filters={"tag:tier": "gold"})
    assert gold.rows[0]["cost"] == Decimal("0.35") and gold.rows[0]["requests"] == 2
    untagged = cube.query(s, since=T0, until=T0 + 86400, filters={"tag:tier": None})
    assert untagged.rows[0]["cost"] == Decimal("1")
    for bad in ("tag:", "tag:a'b", "tag:" + "x" * 65, "tier"):
        with pytest.raises(ValueError):
            cube.query(s, since=T0, until=T0 + 86400, filters={bad: "gold"})
