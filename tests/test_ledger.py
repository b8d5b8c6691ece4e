"""The SQLite ledger, its URL parsing and the batched writer."""

from __future__ import annotations

import sqlite3
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendgate.ledger.events import EVENT_FIELDS, UsageEvent
from spendgate.ledger.open import open_ledger, sqlite_path
from spendgate.ledger.sqlite import EXACT, COLUMNS, InvalidEvent, SQLiteLedger
from spendgate.ledger.writer import LedgerWriter, WriterClosed


def make_event(i: int = 0, **kw) -> UsageEvent:
    base = dict(
        request_id=f"req-{i}",
        ts_start=1_700_000_000.0 + i,
        ts_end=1_700_000_000.5 + i,
        provider="openai",
        model_requested="gpt-4o",
        model_used="gpt-4o",
        team="search",
        input_tokens=100 + i,
        output_tokens=10,
        cost=Decimal("0.000000123456789") * (i + 1),
        list_cost=Decimal("0.0025") * (i + 1),
    )
    base.update(kw)
    return UsageEvent(**base)


@pytest.fixture
def ledger(tmp_path: Path):
    store = SQLiteLedger(tmp_path / "ledger.db")
    yield store
    store.close()


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


# --- schema ---------------------------------------------------------------


def test_schema_has_a_column_per_field_and_the_indexes(ledger: SQLiteLedger):
    cols = {r[1]: r[2] for r in ledger.query("PRAGMA table_info(usage_events)")}
    assert list(cols) == list(EVENT_FIELDS)
    for money in ("cost", "list_cost", "saved"):
        assert cols[money] == "TEXT"
    assert cols["tags"] == cols["prefix_hashes"] == "TEXT"
    assert cols["streamed"] == "INTEGER"
    indexes = {r[0] for r in ledger.query("SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    joined = " ".join(indexes)
    for cols_sql in ("(ts_start)", "(team, ts_start)", "(model_used, ts_start)", "(request_id)"):
        assert cols_sql in joined
    assert ledger.schema_version == 1
    assert ledger.query("PRAGMA journal_mode")[0][0] == "wal"
    assert ledger._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_round_trip_keeps_every_field(ledger: SQLiteLedger):
    event = make_event(
        3,
        latency_ms=12.5,
        ttft_ms=3.25,
        streamed=True,
        http_status=200,
        key_id="key-1",
        user="u1",
        tags={"customer": "acme", "région": "eu"},
        cost=Decimal("0.000000000000000000000000000123456789"),
        saved=Decimal("12345678901234567890.000000000000000001"),
        prefix_hashes=["aa", "bb"],
        similarity=0.97,
        outcome="accepted",
    )
    assert ledger.append([event]) == 1
    [back] = list(ledger.events())
    assert back == event
    assert isinstance(back.streamed, bool) and back.streamed is True
    kind, text = ledger.query("SELECT typeof(cost), cost FROM usage_events")[0]
    assert kind == "text"
    assert text == "0.000000000000000000000000000123456789"  # never 1.23E-28, never REAL
    assert ledger.query("SELECT saved, json_extract(tags, '$.customer') FROM usage_events")[0] == (
        "12345678901234567890.000000000000000001",
        "acme",
    )


def test_resent_batch_is_not_double_counted(ledger: SQLiteLedger):
    batch = [make_event(i) for i in range(50)]
    assert ledger.append(batch) == 50
    assert ledger.append(batch) == 0
    assert ledger.append(batch[:10] + [make_event(99)]) == 1
    assert ledger.count() == 51
    total = ledger.query("SELECT dsum(cost) FROM usage_events")[0][0]
    assert Decimal(total) == sum((e.cost for e in batch), Decimal(0)) + make_event(99).cost


def test_dsum_is_exact_and_null_on_nothing(ledger: SQLiteLedger):
    costs = [Decimal("0.1"), Decimal("0.2"), Decimal("1E-30"), Decimal("99999999999999999999.99")]
    ledger.append([make_event(i, cost=c) for i, c in enumerate(costs)])
    (text,) = ledger.query("SELECT dsum(cost) FROM usage_events")[0]
    assert text == "100000000000000000000.290000000000000000000000000001"
    # the float sum of the same column is wrong, which is why money is not REAL
    (floated,) = ledger.query("SELECT sum(CAST(cost AS REAL)) FROM usage_events")[0]
    assert Decimal(repr(floated)) != Decimal(text)
    assert ledger.query("SELECT dsum(cost) FROM usage_events WHERE 0")[0][0] is None
    assert ledger.query("SELECT dsum(NULL)")[0][0] is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.decimals(min_value=Decimal("-1000"), max_value=Decimal("1000000"), places=18, allow_nan=False),
        max_size=40,
    )
)
def test_dsum_matches_an_exact_python_sum(costs: list[Decimal]):
    with SQLiteLedger(":memory:") as store:
        store.append([make_event(i, cost=c) for i, c in enumerate(costs)])
        (text,) = store.query("SELECT coalesce(dsum(cost), '0') FROM usage_events")[0]
        expected = Decimal(0)
        for c in costs:
            expected = EXACT.add(expected, c)
        assert Decimal(text) == expected


def test_float_money_is_stored_as_its_repr_and_nan_is_refused(ledger: SQLiteLedger):
    ledger.append([make_event(0, cost=0.1)])  # type: ignore[arg-type]
    assert ledger.query("SELECT cost FROM usage_events")[0][0] == "0.1"
    with pytest.raises(InvalidEvent) as info:
        ledger.append([make_event(1), make_event(2, cost=Decimal("NaN")), make_event(3)])
    assert info.value.index == 1
    assert ledger.count() == 1  # nothing of the refused batch was written


def test_unstorable_value_is_pinned_to_its_event(ledger: SQLiteLedger):
    bad = make_event(1, team={"not": "a string"})  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent) as info:
        ledger.append([make_event(0), bad, make_event(2)])
    assert info.value.index == 1
    assert ledger.count() == 0


def test_query_is_read_only(ledger: SQLiteLedger):
    ledger.append([make_event(0)])
    with pytest.raises(sqlite3.OperationalError):
        ledger.query("DELETE FROM usage_events")
    assert ledger.count() == 1


def test_events_window_is_half_open(ledger: SQLiteLedger):
    ledger.append([make_event(i) for i in range(10)])  # ts_start = T+0 .. T+9
    t = 1_700_000_000.0
    assert [e.request_id for e in ledger.events(t + 2, t + 5)] == ["req-2", "req-3", "req-4"]
    assert len(list(ledger.events(since=t + 8))) == 2
    assert len(list(ledger.events(until=t + 1))) == 1
    assert len(list(ledger.events())) == 10


def test_readers_in_other_threads_see_committed_rows(ledger: SQLiteLedger):
    ledger.append([make_event(i) for i in range(5)])
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(ledger.count()))
    t.start()
    t.join()
    assert seen == [5]


def test_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "l.db"
    SQLiteLedger(path).close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE schema_version SET version = 99")
    raw.commit()
    raw.close()
    with pytest.raises(RuntimeError, match="newer"):
        SQLiteLedger(path)


def test_a_field_without_a_column_gets_one(tmp_path: Path):
    path = tmp_path / "l.db"
    SQLiteLedger(path).close()
    raw = sqlite3.connect(path)
    raw.execute("ALTER TABLE usage_events DROP COLUMN outcome")
    raw.commit()
    raw.close()
    with SQLiteLedger(path) as store:
        assert "outcome" in {r[1] for r in store.query("PRAGMA table_info(usage_events)")}
        store.append([make_event(0, outcome="good")])
        assert [e.outcome for e in store.events()] == ["good"]


def test_append_of_500_events_is_fast(ledger: SQLiteLedger):
    batches = [[make_event(i, tags={"k": "v"}) for i in range(500)] for _ in range(3)]
    timings = []
    for batch in batches:
        start = time.perf_counter()
        ledger.append(batch)
        timings.append(time.perf_counter() - start)
    assert ledger.count() == 1500
    assert min(timings) < 0.1, timings  # a few ms on a laptop; generous for CI


# --- URLs -----------------------------------------------------------------


def test_ledger_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert sqlite_path("sqlite:///data/x.db") == "data/x.db"
    assert sqlite_path("sqlite:////var/lib/x.db") == "/var/lib/x.db"
    assert sqlite_path("x.db") == "x.db"
    assert sqlite_path("sqlite:///:memory:") == ":memory:"
    monkeypatch.chdir(tmp_path)
    store = open_ledger("sqlite:///sub/rel.db")
    store.append([make_event(0)])
    store.close()
    assert (tmp_path / "sub" / "rel.db").exists()
    absolute = tmp_path / "abs.db"
    store = open_ledger(f"sqlite:///{absolute}")  # four slashes
    store.close()
    assert absolute.exists()
    store = open_ledger(str(tmp_path / "bare.db"))
    store.close()
    assert (tmp_path / "bare.db").exists()


@pytest.mark.parametrize(
    "url, match",
    [
        ("postgresql://u@h/db", "PostgreSQL"),
        ("postgres://u@h/db", "PostgreSQL"),
        ("mysql://h/db", "unknown scheme"),
        ("sqlite://", "give a path"),
        ("sqlite:x.db", "sqlite:///"),
        ("", "empty"),
    ],
)
def test_bad_ledger_urls(url: str, match: str):
    with pytest.raises(ValueError, match=match):
        open_ledger(url)


# --- the writer -----------------------------------------------------------


class FlakyStore:
    """Delegates to a real store; the first `fail` appends raise (optionally after writing)."""

    def __init__(self, inner: SQLiteLedger, fail: int, write_then_fail: bool = False) -> None:
        self.inner = inner
        self.fail = fail
        self.write_then_fail = write_then_fail
        self.calls = 0

    def append(self, events, *, stored=None):
        self.calls += 1
        if self.fail > 0:
            self.fail -= 1
            if self.write_then_fail:
                self.inner.append(events)  # committed, but the caller hears an error
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        return self.inner.append(events, stored=stored)

    def query(self, sql, params=()):
        return self.inner.query(sql, params)

    def events(self, since=None, until=None):
        return self.inner.events(since, until)

    def close(self):
        self.inner.close()


def test_concurrent_submitters_lose_nothing(tmp_path: Path):
    store = SQLiteLedger(tmp_path / "l.db")
    writer = LedgerWriter(store, batch_size=64, flush_interval_ms=5).start()
    threads, per_thread = 8, 1500

    def submit_many(t: int) -> None:
        for i in range(per_thread):
            writer.submit(make_event(t * per_thread + i))

    workers = [threading.Thread(target=submit_many, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert writer.flush(timeout=30)
    n = threads * per_thread
    assert store.count() == n
    assert writer.submitted == writer.written == n
    assert writer.queue_depth == 0
    assert len({r[0] for r in store.query("SELECT event_id FROM usage_events")}) == n
    assert writer.close()


def test_close_drains_everything(tmp_path: Path):
    path = tmp_path / "l.db"
    writer = LedgerWriter(SQLiteLedger(path), batch_size=100_000, flush_interval_ms=60_000).start()
    events = [make_event(i) for i in range(2345)]
    for e in events:
        writer.submit(e)
    assert writer.close(timeout=30)
    with pytest.raises(WriterClosed):
        writer.submit(make_event(9999))
    with SQLiteLedger(path) as store:
        assert store.count() == 2345
        total = Decimal(store.query("SELECT dsum(cost) FROM usage_events")[0][0])
    assert total == sum((e.cost for e in events), Decimal(0))


def test_close_without_start_still_writes(tmp_path: Path):
    path = tmp_path / "l.db"
    writer = LedgerWriter(SQLiteLedger(path))
    for i in range(10):
        writer.submit(make_event(i))
    assert writer.close()
    with SQLiteLedger(path) as store:
        assert store.count() == 10


def test_flush_interval_writes_a_partial_batch(ledger: SQLiteLedger):
    writer = LedgerWriter(ledger, batch_size=10_000, flush_interval_ms=30).start()
    for i in range(3):
        writer.submit(make_event(i))
    assert wait_until(lambda: ledger.count() == 3, timeout=5)
    writer.close()


def test_a_full_batch_is_written_without_waiting_for_the_interval(ledger: SQLiteLedger):
    writer = LedgerWriter(ledger, batch_size=10, flush_interval_ms=60_000).start()
    for i in range(25):
        writer.submit(make_event(i))
    assert wait_until(lambda: ledger.count() == 20, timeout=5)
    time.sleep(0.05)
    assert ledger.count() == 20  # the last 5 wait for the interval (or a flush)
    assert writer.queue_depth == 5
    assert writer.flush(timeout=5)
    assert ledger.count() == 25
    writer.close()


def test_failing_append_is_retried_and_loses_nothing(ledger: SQLiteLedger):
    flaky = FlakyStore(ledger, fail=2)
    writer = LedgerWriter(flaky, batch_size=1000, flush_interval_ms=10, retry_initial_s=0.01).start()
    for i in range(300):
        writer.submit(make_event(i))
    assert writer.flush(timeout=10)
    assert ledger.count() == 300
    assert writer.failed_batches == 2
    assert writer.written == 300
    assert flaky.calls >= 3
    writer.close()


def test_batch_written_but_reported_failed_is_not_double_counted(ledger: SQLiteLedger):
    flaky = FlakyStore(ledger, fail=1, write_then_fail=True)
    writer = LedgerWriter(flaky, batch_size=1000, flush_interval_ms=10, retry_initial_s=0.01).start()
    events = [make_event(i) for i in range(200)]
    for e in events:
        writer.submit(e)
    assert writer.flush(timeout=10)
    assert writer.failed_batches == 1
    assert ledger.count() == 200
    assert Decimal(ledger.query("SELECT dsum(cost) FROM usage_events")[0][0]) == sum(
        (e.cost for e in events), Decimal(0)
    )
    writer.close()


def test_invalid_event_is_set_aside_and_spilled(ledger: SQLiteLedger, tmp_path: Path):
    spill = tmp_path / "spill.jsonl"
    writer = LedgerWriter(ledger, batch_size=1000, flush_interval_ms=10, spill_path=spill).start()
    bad = make_event(5, cost=Decimal("NaN"))
    for i in range(10):
        writer.submit(bad if i == 5 else make_event(i))
    assert writer.flush(timeout=10)
    assert ledger.count() == 9
    assert writer.rejected == 1 and writer.written == 9 and writer.queue_depth == 0
    assert bad.event_id in spill.read_text()
    writer.close()


def test_close_gives_up_on_a_dead_store_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    class DeadStore(FlakyStore):
        closed = False

        def close(self):
            self.closed = True

    inner = SQLiteLedger(tmp_path / "l.db")
    dead = DeadStore(inner, fail=10**9)
    spill = tmp_path / "spill.jsonl"
    writer = LedgerWriter(dead, batch_size=10, flush_interval_ms=1, retry_initial_s=0.01, spill_path=spill)
    writer.start()
    for i in range(25):
        writer.submit(make_event(i))
    assert writer.close(timeout=0.3) is False
    assert writer.abandoned == 25
    assert len(spill.read_text().splitlines()) == 25
    assert dead.closed
    assert "giving up" in caplog.text
    inner.close()


def test_submit_never_waits_for_the_store(ledger: SQLiteLedger):
    release = threading.Event()

    class SlowStore(FlakyStore):
        def append(self, events, *, stored=None):
            release.wait(10)
            return self.inner.append(events, stored=stored)

    writer = LedgerWriter(SlowStore(ledger, fail=0), batch_size=50, flush_interval_ms=1).start()
    writer.submit(make_event(0))
    time.sleep(0.02)  # the writer is now stuck in append
    start = time.perf_counter()
    for i in range(1, 5001):
        writer.submit(make_event(i))
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0  # 5,000 submits while the store is blocked
    assert ledger.count() == 0
    release.set()
    assert writer.flush(timeout=10)
    assert ledger.count() == 5001
    writer.close()


def test_columns_cover_every_field():
    assert tuple(COLUMNS) == EVENT_FIELDS



def test_listeners_see_each_stored_event_once(ledger: SQLiteLedger):
    """An ingest client retrying a batch must not be counted twice by /metrics or alerts."""
    seen: list[str] = []
    writer = LedgerWriter(ledger, batch_size=10, flush_interval_ms=1)
    writer.add_listener(lambda events: seen.extend(e.event_id for e in events))
    writer.start()
    first, second = make_event(1), make_event(2)
    writer.submit(first)
    writer.flush(5)
    writer.submit(first)  # the same event again (a retried delivery)
    writer.submit(second)
    writer.flush(5)
    assert ledger.count() == 2
    writer.close()
    assert seen == [first.event_id, second.event_id]


def test_side_table_writes_cannot_touch_the_events(ledger: SQLiteLedger):
    ledger.append([make_event(1)])
    for sql in ("DELETE FROM usage_events", "update usage_events set cost = '0'", "INSERT OR REPLACE INTO usage_events (event_id) VALUES ('x')"):
        with pytest.raises(ValueError, match="append-only"):
            ledger.write([(sql, ())])
    assert ledger.count() == 1
    ledger.write([("CREATE TABLE IF NOT EXISTS notes (n TEXT)", ()), ("INSERT INTO notes SELECT event_id FROM usage_events", ())])
    assert ledger.query("SELECT count(*) FROM notes")[0][0] == 1
