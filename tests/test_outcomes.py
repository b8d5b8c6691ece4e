"""POST /v1/outcomes on a real gateway: outcomes for requests and sessions, owned
by the key that made them, with exact business value; cost per successful
outcome per feature is the ledger's cost over the successes."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai

from conftest import Gateway
from spendgate.analytics.outcomes import outcomes_by_feature, per_outcome
from spendgate.analytics.slo import CostSlo, slo_status
from spendgate.controls.identify import ANY_KEY_ID
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.outcomes import _REKEY, ANY_KEY_ID as LEDGER_ANY_KEY_ID, ensure_schema, record_request_outcome
from spendgate.ledger.sqlite import SQLiteLedger
from spendgate.outcomes import FLUSH_INTERVAL_S, OwnedOutcomes


def call(gateway: Gateway, key: str, tags: str) -> str:
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    r = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}], extra_headers={"x-spendgate-tags": tags}
    )
    return r.headers["x-spendgate-request-id"]


def post(gateway: Gateway, key: str | None, body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, bytes):
        return httpx.post(f"{gateway.url}/v1/outcomes", headers={**headers, "content-type": "application/json"}, content=body)
    return httpx.post(f"{gateway.url}/v1/outcomes", headers=headers, json=body)


def db_rows(gateway: Gateway, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(gateway.ledger)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def test_a_request_outcome_is_recorded_at_once_with_its_exact_value_feature_and_team(gateway: Gateway) -> None:
    rid = call(gateway, "sk-test-search", "feature=checkout")  # reported right away: the event may not be written yet
    r = post(gateway, "sk-test-search", {"request_id": rid, "outcome": "success", "value": "19.90"})
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "spendgate.outcome", "request_id": rid, "outcome": "success", "value": "19.90",
                        "feature": "checkout", "ts": r.json()["ts"]}  # fmt: skip
    assert db_rows(gateway, "SELECT outcome, value, feature, team, key_id FROM outcomes WHERE request_id = ?", (rid,)) == [
        ("success", "19.90", "checkout", "search", "key-search")
    ]
    # a JSON number is read exactly too (0.1 is not 0.1000000000000000055...), and the latest word counts
    r = post(gateway, "sk-test-search", {"request_id": rid, "outcome": "failure", "value": 0.1, "ts": "2026-11-03T10:00:00Z"})
    assert r.status_code == 200 and r.json()["value"] == "0.1"
    assert db_rows(gateway, "SELECT outcome, value, ts FROM outcomes WHERE request_id = ?", (rid,)) == [
        ("failure", "0.1", 1793700000.0)
    ]


def test_a_session_outcome_counts_once_however_many_calls_the_session_made(gateway: Gateway) -> None:
    for _ in range(3):
        call(gateway, "sk-test-search", "feature=assistant,session_id=sess-1")
    r = post(gateway, "sk-test-search", {"session_id": "sess-1", "outcome": "success", "value": "5"})
    assert r.status_code == 200 and r.json()["feature"] == "assistant"
    r = post(gateway, "sk-test-search", {"session_id": "sess-1", "outcome": "success", "value": "7.25"})
    assert r.status_code == 200
    assert db_rows(gateway, "SELECT key_id, outcome, value, feature, team FROM session_outcomes WHERE session_id = 'sess-1'") == [
        ("key-search", "success", "7.25", "assistant", "search")
    ]
    with SQLiteLedger(gateway.ledger) as store:
        totals = outcomes_by_feature(store, None, None)["assistant"]
    assert (totals.successes, totals.failures, totals.value) == (1, 0, Decimal("7.25"))


def test_another_keys_request_or_session_is_a_404_that_reveals_nothing(gateway: Gateway) -> None:
    rid = call(gateway, "sk-test-search", "feature=secret,session_id=sess-private")
    theirs = post(gateway, "sk-test-plain", {"request_id": rid, "outcome": "failure"})
    unknown = post(gateway, "sk-test-plain", {"request_id": "no-such-request", "outcome": "failure"})
    assert theirs.status_code == unknown.status_code == 404
    err = theirs.json()["error"]
    assert err == {"message": f"No request '{rid}' made with this key is in the ledger.", "type": "invalid_request_error",
                   "param": None, "code": "not_found"}  # fmt: skip
    assert unknown.json()["error"]["message"] == "No request 'no-such-request' made with this key is in the ledger."
    assert post(gateway, "sk-test-plain", {"session_id": "sess-private", "outcome": "success"}).status_code == 404
    assert db_rows(gateway, "SELECT * FROM outcomes WHERE request_id = ?", (rid,)) == []
    assert db_rows(gateway, "SELECT * FROM session_outcomes WHERE session_id = 'sess-private'") == []
    # the owner may, and an anonymous caller is told to authenticate
    assert post(gateway, "sk-test-search", {"session_id": "sess-private", "outcome": "success"}).status_code == 200
    assert post(gateway, None, {"request_id": rid, "outcome": "success"}).status_code == 401


def test_bad_input_gets_a_400_in_the_openai_error_format_naming_the_field(gateway: Gateway) -> None:
    rid = call(gateway, "sk-test-plain", "feature=checkout")
    future = time.time() + 3600
    for body, words in (
        ({"outcome": "success"}, "exactly one of request_id"),
        ({"request_id": rid, "session_id": "s", "outcome": "success"}, "exactly one of request_id"),
        ({"request_id": rid, "outcome": "great"}, "outcome"),
        ({"request_id": rid}, "outcome"),
        ({"request_id": rid, "outcome": "success", "value": "lots"}, "value"),
        ({"request_id": rid, "outcome": "success", "value": True}, "value"),
        ({"request_id": rid, "outcome": "success", "value": "1e999999"}, "value"),
        ({"request_id": rid, "outcome": "success", "ts": future}, "ts"),
        ({"request_id": rid, "outcome": "success", "ts": "yesterday-ish"}, "ts"),
        ({"request_id": rid, "outcome": "success", "feature": ""}, "feature"),
        ({"request_id": rid, "outcome": "success", "score": 1}, "Unknown field(s): score"),
        ({"request_id": "has spaces", "outcome": "success"}, "request_id"),
        (b'{"request_id": "x", "outcome": "success", "value": NaN}', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
    ):
        r = post(gateway, "sk-test-plain", body)
        assert r.status_code == 400, (body, r.text)
        err = r.json()["error"]
        assert words in err["message"] and err["type"] == "invalid_request_error", (body, err)
    assert db_rows(gateway, "SELECT * FROM outcomes WHERE request_id = ?", (rid,)) == []


def test_cost_per_successful_outcome_per_feature_is_ledger_cost_over_successes(gateway: Gateway) -> None:
    rids = [call(gateway, "sk-test-search", "feature=unit-econ") for _ in range(4)]
    call(gateway, "sk-test-search", "feature=unit-econ,session_id=ue-session")
    call(gateway, "sk-test-search", "feature=unit-econ,session_id=ue-session")
    for rid, outcome in zip(rids, ("success", "success", "failure", "failure")):
        assert post(gateway, "sk-test-search", {"request_id": rid, "outcome": outcome, "value": "2.50"}).status_code == 200
    assert post(gateway, "sk-test-search", {"session_id": "ue-session", "outcome": "success", "value": "10"}).status_code == 200
    gateway.wait_rows("feature = 'unit-econ'", count=6)
    costs = [Decimal(c) for (c,) in db_rows(gateway, "SELECT cost FROM usage_events WHERE feature = 'unit-econ'")]
    assert len(costs) == 6 and all(c > 0 for c in costs)
    ledger_cost = sum(costs, Decimal(0))
    with SQLiteLedger(gateway.ledger) as store:
        totals = outcomes_by_feature(store, time.time() - 3600, time.time() + 1)["unit-econ"]
        assert (totals.successes, totals.failures, totals.value) == (3, 2, Decimal("20.00"))
        [status] = slo_status(store, [CostSlo(name="ue", feature="unit-econ", max_cost_per_outcome=Decimal("1"), window="1h")], time.time() + 1)
    assert status.cost == ledger_cost and status.successes == 3
    assert status.cost_per_outcome == per_outcome(ledger_cost, 3)
    assert abs(status.cost_per_outcome - ledger_cost / 3) < Decimal("1e-12") and status.ok is True


# ---- outcomes are per key and request id: request ids are client-chosen -----------------------


def ingest(gateway: Gateway, key: str, event: dict[str, Any]) -> None:
    base = {"endpoint": "chat.completions", "provider": "openai", "model_requested": "gpt-4o-mini",
            "model_used": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 5, "source": "sdk"}  # fmt: skip
    r = httpx.post(f"{gateway.url}/v1/spendgate/events", headers={"authorization": f"Bearer {key}"}, json={"events": [{**base, **event}]})
    assert r.status_code == 200, r.text


def test_two_keys_with_the_same_request_id_neither_see_nor_replace_each_others_outcome(gateway: Gateway) -> None:
    rid = "req-shared-by-two-keys"
    ingest(gateway, "sk-test-search", {"event_id": "evt-shared-a", "request_id": rid, "feature": "secret-a"})
    ingest(gateway, "sk-test-plain", {"event_id": "evt-shared-b", "request_id": rid})  # B's own request, same id
    a = post(gateway, "sk-test-search", {"request_id": rid, "outcome": "success", "value": "5"})
    assert a.status_code == 200 and a.json()["feature"] == "secret-a"
    b = post(gateway, "sk-test-plain", {"request_id": rid, "outcome": "failure", "value": "1"})
    assert b.status_code == 200, b.text
    assert b.json()["feature"] is None  # B's events have no feature: A's is not B's to learn
    fb = httpx.post(f"{gateway.url}/v1/spendgate/feedback", headers={"Authorization": "Bearer sk-test-plain"},
                    json={"request_id": rid, "outcome": "bad", "score": 0.1})  # fmt: skip
    assert fb.status_code == 200, fb.text
    rows = db_rows(gateway, "SELECT key_id, outcome, score, value, feature, team FROM outcomes WHERE request_id = ? ORDER BY key_id", (rid,))
    assert rows == [("key-plain", "bad", 0.1, None, None, None), ("key-search", "success", None, "5", "secret-a", "search")]
    # A reporting again replaces A's record only
    assert post(gateway, "sk-test-search", {"request_id": rid, "outcome": "failure"}).status_code == 200
    rows = db_rows(gateway, "SELECT key_id, outcome FROM outcomes WHERE request_id = ? ORDER BY key_id", (rid,))
    assert rows == [("key-plain", "bad"), ("key-search", "failure")]


def test_the_ledgers_any_key_id_is_the_gateways() -> None:
    assert LEDGER_ANY_KEY_ID == ANY_KEY_ID


OLD_OUTCOMES = """CREATE TABLE outcomes (request_id TEXT NOT NULL PRIMARY KEY, outcome TEXT NOT NULL,
    score REAL, key_id TEXT, ts REAL NOT NULL)"""


def _old_ledger(path: Path, *, unit_economics_columns: bool) -> None:
    """A ledger whose `outcomes` is keyed on request_id alone, as before, with rows."""
    SQLiteLedger(path).close()
    con = sqlite3.connect(path)
    con.execute("DROP TABLE outcomes")
    con.execute(OLD_OUTCOMES)
    con.execute("CREATE INDEX outcomes_ts ON outcomes (ts)")
    con.execute("INSERT INTO outcomes (request_id, outcome, score, key_id, ts) VALUES ('r1', 'success', 0.9, 'ka', 1.0)")
    con.execute("INSERT INTO outcomes (request_id, outcome, score, key_id, ts) VALUES ('r2', 'failure', NULL, NULL, 2.0)")
    if unit_economics_columns:
        for col in ("value", "feature", "team"):
            con.execute(f"ALTER TABLE outcomes ADD COLUMN {col} TEXT")
        con.execute("UPDATE outcomes SET value = '19.90', feature = 'checkout', team = 'shop' WHERE request_id = 'r1'")
    con.commit()
    con.close()


def _pk(path: Path) -> list[tuple[str, int, int]]:
    con = sqlite3.connect(path)
    try:
        return sorted((r[1], r[5], r[3]) for r in con.execute("PRAGMA table_info(outcomes)") if r[5])
    finally:
        con.close()


def test_an_old_outcomes_table_is_rekeyed_per_key_with_its_rows_kept(tmp_path: Path) -> None:
    for extra in (True, False):
        path = tmp_path / f"old-{extra}.db"
        _old_ledger(path, unit_economics_columns=extra)
        with SQLiteLedger(path) as store:
            ensure_schema(store)
            rows = store.query("SELECT key_id, request_id, outcome, score, ts, value, feature, team FROM outcomes ORDER BY request_id")
            assert rows == [("ka", "r1", "success", 0.9, 1.0, "19.90" if extra else None, "checkout" if extra else None, "shop" if extra else None),
                            (ANY_KEY_ID, "r2", "failure", None, 2.0, None, None, None)]  # fmt: skip
            assert {r[1] for r in store.query("PRAGMA index_list(outcomes)")} >= {"outcomes_ts"}
            # another key's outcome of r1 is its own record now
            record_request_outcome(store, "r1", "failure", key_id="kb", ts=3.0)
            assert store.query("SELECT key_id, outcome FROM outcomes WHERE request_id = 'r1' ORDER BY key_id") == [("ka", "success"), ("kb", "failure")]
            # a second process that looked before the first migrated runs the rebuild again: harmless
            store.write([(sql, ()) for sql in _REKEY])
            assert len(store.query("SELECT * FROM outcomes")) == 3
        assert _pk(path) == [("key_id", 1, 1), ("request_id", 2, 1)]


def test_every_store_object_is_migrated_even_one_reusing_a_dead_ones_id(tmp_path: Path) -> None:
    """Readiness goes with the store object: a ledger opened after another was
    closed and collected (its id() free again) still gets its migration."""
    for i in range(5):
        _old_ledger(tmp_path / f"l{i}.db", unit_economics_columns=False)
        store = SQLiteLedger(tmp_path / f"l{i}.db")
        ensure_schema(store)
        store.close()
        del store
        assert _pk(tmp_path / f"l{i}.db") == [("key_id", 1, 1), ("request_id", 2, 1)]


def test_the_store_api_records_per_key_on_an_old_ledger(tmp_path: Path) -> None:
    _old_ledger(tmp_path / "l.db", unit_economics_columns=False)
    with SQLiteLedger(tmp_path / "l.db") as store:  # no ensure_schema first: record_outcome migrates
        store.record_outcome("r1", "failure", None, "kb", 5.0)
        store.record_outcome("r3", "success", None, None, 6.0)
        assert store.query("SELECT key_id, request_id, outcome FROM outcomes ORDER BY request_id, key_id") == [
            ("ka", "r1", "success"), ("kb", "r1", "failure"), (ANY_KEY_ID, "r2", "failure"), (ANY_KEY_ID, "r3", "success")]  # fmt: skip


class _QueuedWriter:
    """A ledger writer whose flush writes what was submitted before the flush
    started (as the real one's marker does), slowly, counting flushes."""

    def __init__(self, store: SQLiteLedger) -> None:
        self.store = store
        self.pending: list[UsageEvent] = []
        self.starts: list[float] = []

    def flush(self, timeout: float | None = None) -> bool:
        self.starts.append(time.monotonic())
        batch, self.pending = self.pending, []
        time.sleep(0.05)
        if batch:
            self.store.append(batch)
        return True


def test_unknown_ids_share_rate_limited_flushes_and_a_queued_request_is_still_found(tmp_path: Path) -> None:
    async def scenario(owned: OwnedOutcomes, writer: _QueuedWriter) -> None:
        # 50 concurrent unknown ids share flushes (those whose first look ends
        # after one started need the next: at most two here, not fifty)
        results = await asyncio.gather(*(owned.owner("k", request_id=f"nope-{i}") for i in range(50)), return_exceptions=True)
        assert all(getattr(r, "status", None) == 404 for r in results), results
        assert 1 <= len(writer.starts) <= 2
        # a stream of unknown ids for 0.5 s: flushes start at most every FLUSH_INTERVAL_S
        t0 = time.monotonic()
        calls = 0
        while time.monotonic() - t0 < 0.5:
            await asyncio.gather(*(owned.owner("k", request_id="nope") for _ in range(3)), return_exceptions=True)
            calls += 3
        elapsed = time.monotonic() - t0
        gaps = [b - a for a, b in zip(writer.starts, writer.starts[1:])]
        assert min(gaps) >= FLUSH_INTERVAL_S * 0.8, gaps  # (timed inside the flush thread: some jitter)
        assert len([t for t in writer.starts if t >= t0]) <= elapsed / FLUSH_INTERVAL_S + 1 < calls
        # an unknown id starts a flush; a request submitted while it runs is not
        # in it, and its outcome (posted right after) waits for the next one
        first = asyncio.ensure_future(owned.owner("k", request_id="nope-again"))
        await asyncio.sleep(0.01)
        assert len(writer.starts) > 0 and writer.pending == []
        writer.pending.append(UsageEvent(request_id="queued", key_id="k", feature="late"))
        found = await owned.owner("k", request_id="queued")
        assert found.feature == "late"
        assert (await asyncio.gather(first, return_exceptions=True))[0].status == 404  # type: ignore[union-attr]

    with SQLiteLedger(tmp_path / "l.db") as store:
        writer = _QueuedWriter(store)
        asyncio.run(scenario(OwnedOutcomes(None, writer), writer))  # type: ignore[arg-type]
