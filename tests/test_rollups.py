"""Rollups equal the events' own exact sums, whatever arrives and however often."""

from __future__ import annotations

import sqlite3
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendgate.analytics import cube, rollups
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.sqlite import SQLiteLedger

T0 = 1_717_200_000  # 2024-06-01 00:00 UTC

odd_money = st.one_of(
    st.decimals(min_value=0, max_value=5, places=12, allow_nan=False),
    st.sampled_from([Decimal("0.1"), Decimal("1E-18"), Decimal("123456789.000000000001"), Decimal("0"), Decimal("-0.3")]),
)
event = st.builds(
    UsageEvent,
    event_id=st.sampled_from([f"e{i}" for i in range(60)]),  # few ids: duplicates across and within batches
    ts_start=st.floats(min_value=T0 - 40 * 86400, max_value=T0 + 40 * 86400, allow_nan=False),
    attempt=st.sampled_from([1, 2]),
    model_used=st.sampled_from(["gpt-4o", "mini"]),
    provider=st.sampled_from(["openai", "anthropic"]),
    team=st.sampled_from([None, "a", "b", ""]),
    feature=st.sampled_from([None, "chat", "search"]),
    user=st.sampled_from([None, "u1", "u2"]),
    tenant=st.sampled_from([None, "t1"]),
    key_id=st.sampled_from([None, "k1"]),
    session_id=st.sampled_from([None, "s1", "s2", "s3"]),
    prompt_template=st.sampled_from([None, "p"]),
    status=st.sampled_from(["ok", "error", "client_disconnect"]),
    cache_status=st.sampled_from(["miss", "exact", "semantic", "bypass"]),
    input_tokens=st.integers(0, 10**6),
    output_tokens=st.integers(0, 10**4),
    cost=odd_money,
    list_cost=odd_money,
    saved=odd_money,
    saved_by=st.sampled_from([None, "cache", "routing", "prompt_cache", "routing,prompt_cache", "cache,routing"]),
)
batches = st.lists(st.lists(event, max_size=25), min_size=1, max_size=8)

QUERIES = [
    ((), {}, None),
    (("team",), {}, "day"),
    (("model", "feature"), {"team": None}, None),
    (("user",), {"team": "a"}, "month"),
    (("user",), {"user": ("u1", None)}, None),  # weeks, an IN filter with untagged
    (("tenant", "model"), {}, "day"),
    (("prompt_template", "prompt_version"), {}, None),
    (("key_id",), {"model": "mini"}, None),
    (("cache_status", "status"), {}, "hour"),
    (("session_id",), {}, None),  # no rollup: the events
]
WINDOWS = [(None, None), (T0 - 7 * 86400 + 1234.5, T0 + 86400 * 3 + 17.25), (T0, T0 + 86400 * 31), (T0 + 60.5, T0 + 3000)]


def _dsum_events(store: SQLiteLedger) -> tuple:
    return store.query(
        "SELECT count(*), coalesce(dsum(cost), '0'), coalesce(dsum(list_cost), '0'), coalesce(dsum(saved), '0'), "
        "coalesce(sum(input_tokens), 0) FROM usage_events"
    )[0]


def _table_totals(store: SQLiteLedger, table: str) -> tuple:
    vals = rollups.decode_metrics(store.query(f"SELECT {', '.join(rollups.metrics_sql('rollup', exact=True))} FROM {table}")[0])
    m = dict(zip(rollups.METRICS, vals))
    return (m["requests"] or 0, m["cost"], m["list_cost"], m["saved"], m["input_tokens"] or 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_rollups_equal_events_digit_for_digit(batches: list[list[UsageEvent]]) -> None:
    store = SQLiteLedger(":memory:")
    for batch in batches:
        store.append(batch)
        store.append(batch[: len(batch) // 2])  # a retried batch counts once
    n, cost, list_cost, saved, tokens = _dsum_events(store)
    for r in rollups.ROLLUPS:
        got = _table_totals(store, r.table)
        assert got == (n, Decimal(cost), Decimal(list_cost), Decimal(saved), tokens), r.name
    for group_by, filters, bucket in QUERIES:
        for since, until in WINDOWS:
            planned = cube.query(store, since=since, until=until, group_by=group_by, filters=filters, bucket=bucket)
            raw = cube.events_query(store, since=since, until=until, group_by=group_by, filters=filters, bucket=bucket)
            assert planned.rows == raw.rows, (group_by, filters, bucket, since, until, planned.parts)
    # sessions: each counted once, on the day of its first event
    counts, _ = cube.sessions_by_feature(store, None, None)
    raw_sessions = store.query("SELECT count(DISTINCT session_id) FROM usage_events")[0][0]
    assert sum(counts.values()) == raw_sessions


def test_money_text_is_exact_after_many_upserts() -> None:
    store = SQLiteLedger(":memory:")
    for i in range(50):
        store.append([UsageEvent(event_id=f"x{i}", ts_start=T0 + i, team="a", cost=Decimal("0.000000000000000001"))])
    assert store.query("SELECT cost_n, cost_rem FROM rollup_day_tfm") == [(0, "0.000000000000000050")]
    assert cube.query(store, since=None, until=None).rows[0]["cost"] == Decimal("5E-17")


def test_old_ledger_gets_rollups_built_on_open(tmp_path) -> None:
    path = tmp_path / "old.db"
    store = SQLiteLedger(path)
    store.append([UsageEvent(event_id=f"e{i}", ts_start=T0 + i * 1800, team="a", session_id=f"s{i % 3}", cost=Decimal("0.25")) for i in range(40)])
    store.close()
    # simulate a ledger written before rollups existed
    conn = sqlite3.connect(path)
    for stmt in rollups.drop_sql():
        conn.execute(stmt)
    conn.commit()
    conn.close()
    store = SQLiteLedger(path)
    res = cube.query(store, since=T0, until=T0 + 43200, group_by=("team",))
    assert res.source.startswith("rollup:")
    assert res.rows == cube.events_query(store, since=T0, until=T0 + 43200, group_by=("team",)).rows
    assert res.rows[0]["cost"] == Decimal("6.00")  # 24 half-hourly events in the first 12 hours
    assert sum(cube.sessions_by_feature(store, None, None)[0].values()) == 3
    rollups.rebuild_rollups(store)
    assert cube.query(store, since=None, until=None).rows[0]["cost"] == Decimal("10.00")


def test_duplicate_ids_within_a_batch_count_once() -> None:
    store = SQLiteLedger(":memory:")
    e = UsageEvent(event_id="same", ts_start=T0, cost=Decimal("1.5"))
    assert store.append([e, e, UsageEvent(event_id="same", ts_start=T0, cost=Decimal("9"))]) == 1
    assert store.append([e]) == 0
    assert store.query("SELECT requests, cost_n, cost_rem FROM rollup_hour_tfm") == [(1, 1_500_000_000, None)]


def test_amounts_past_nine_decimals_and_negative_sum_exactly() -> None:
    """Nano units hold 9 decimals; the rest rides in the remainder, sign and all."""
    store = SQLiteLedger(":memory:")
    amounts = [Decimal("0.1234567891234"), Decimal("-0.0000000005"), Decimal("-2.000000001"), Decimal("7"), Decimal("1E-30")]
    store.append([UsageEvent(event_id=f"a{i}", ts_start=T0 + i, team="a", cost=a) for i, a in enumerate(amounts)])
    want = Decimal("5.123456787623400000000000000001")  # exact (a plain sum() would round to 28 digits)
    n, rem = store.query("SELECT cost_n, cost_rem FROM rollup_hour_tfm")[0]
    assert n == 123_456_789 - 0 - 2_000_000_001 + 7_000_000_000 + 0  # each truncated toward zero
    assert rollups.money_value(n, rem) == want
    assert cube.query(store, since=None, until=None).rows[0]["cost"] == want
    assert cube.events_query(store, since=None, until=None).rows[0]["cost"] == want


def test_int64_overflow_falls_back_to_exact_sums() -> None:
    """$4e9 per rollup row stays an integer; sums past int64 are still exact."""
    store = SQLiteLedger(":memory:")
    big = Decimal("3000000000.000000001")  # 3e18 nano: two of them pass the per-row bound
    events = [UsageEvent(event_id=f"b{i}", ts_start=T0 + (i // 2) * 86400 * 40 + i, team="a", cost=big) for i in range(5)]
    store.append(events[:1])
    store.append(events[1:2])  # same hour: the upsert pushes the row's nanos past the bound
    store.append(events[2:])  # within one batch: the fold passes the bound
    store.append([UsageEvent(event_id="huge", ts_start=T0, team="a", cost=Decimal("1E+40"))])  # past int64 alone
    want = Decimal("10000000000000000000000000000015000000000.000000005")
    for r in rollups.ROLLUPS:
        assert _table_totals(store, r.table)[1] == want, r.name
    # month rows hold ~3e18 each: sum(cost_n) over them passes int64 -> exact dsum fallback
    res = cube.query(store, since=None, until=None, group_by=("team",))
    assert res.rows[0]["cost"] == want
    assert cube.events_query(store, since=None, until=None).rows[0]["cost"] == want
    # and the rebuild from the events (the _migrate path) agrees
    rollups.rebuild_rollups(store)
    for r in rollups.ROLLUPS:
        assert _table_totals(store, r.table)[1] == want, r.name
    assert cube.query(store, since=None, until=None).rows[0]["cost"] == want


def test_rebuild_equals_appended_rollups() -> None:
    """The SQL rebuild (events -> biggest rollups -> smaller ones) gives the rows the write path gave."""
    store = SQLiteLedger(":memory:")
    store.append(
        [
            UsageEvent(
                event_id=f"r{i}", ts_start=T0 + i * 977.3, team=[None, "a", "b"][i % 3], user=f"u{i % 7}", tenant=f"t{i % 4}",
                prompt_template="p", prompt_version=str(i % 2), cache_status=["miss", "exact"][i % 2],
                cost=Decimal(i) / 7 if i % 5 == 0 else Decimal("0.000001") * i, saved=Decimal("-0.25") * (i % 3),
                saved_by="cache" if i % 2 else None,
            )
            for i in range(400)
        ]
    )
    before = {r.table: sorted(store.query(f"SELECT * FROM {r.table}"), key=repr) for r in rollups.ROLLUPS}
    rollups.rebuild_rollups(store)
    for r in rollups.ROLLUPS:
        after = sorted(store.query(f"SELECT * FROM {r.table}"), key=repr)
        assert [_canon(row) for row in after] == [_canon(row) for row in before[r.table]], r.name


def _canon(row: tuple) -> tuple:
    """Remainder text compared as a number ('0.10' == '0.1'); other values as they are."""
    return tuple(Decimal(v) if isinstance(v, str) and "." in v else v for v in row)


def test_events_written_without_rollups_are_added_on_the_next_open(tmp_path) -> None:
    """An older spendgate sharing the ledger inserts events but keeps no rollups:
    the next open finds them past the high-water mark and adds them, exactly."""
    import sqlite3 as _sqlite3

    from spendgate.analytics import cube
    from spendgate.ledger.sqlite import SQLiteLedger, event_to_row, _INSERT_SQL

    path = tmp_path / "shared.db"
    store = SQLiteLedger(path)
    store.append([UsageEvent(event_id="a", ts_start=T0, cost=Decimal("1.25"), team="x")])
    store.close()
    con = _sqlite3.connect(path)  # the "older writer": events only
    con.executemany(_INSERT_SQL, [event_to_row(UsageEvent(event_id=f"old{i}", ts_start=T0 + i, cost=Decimal("0.333333333333"), team="x")) for i in range(3)])
    con.commit()
    con.close()
    store = SQLiteLedger(path)
    try:
        total = cube.query(store, since=T0 - 86400 * 40, until=T0 + 86400 * 40, group_by=("team",))
        assert total.source != "events"
        assert [r["cost"] for r in total.rows] == [Decimal("2.249999999999")]
    finally:
        store.close()
