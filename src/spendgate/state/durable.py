"""Budget state that survives a restart: open reservations and burst grants in SQLite.

Why: a reservation stands for a call that may already be spending money
upstream. If the gateway restarts (gracefully or by crashing) while calls
are in flight, forgetting their reservations would let new calls spend the
same room again. So every reservation is written to the state file
(`state.url`, default `sqlite:///spendgate-state.db`) and restored at
start-up, where it counts until it settles or its TTL runs out.

Settled spend is NOT kept here: the ledger is the source of truth and is
summed at start-up (`controls/rebuild.py`). To count nothing twice, a
persisted reservation whose request already has ledger rows is dropped at
start-up (the ledger holds its real cost).

Write-behind: the event loop only notes an opened reservation in a dict
(and takes it out again when it closes); a thread, every `flush_interval_ms`,
takes what is still open and writes it in one transaction. A reservation
that opens and closes between two batches is never written, nor queued; a
longer one is one insert and one delete. Nothing on the event loop ever
waits for SQLite.

Crash window: the ledger and this file each lose at most their last
unwritten batch. A call whose ledger row was lost is lost to the budgets
too (the ledger is the source of truth); if its reservation was still in the
file, it counts its worst case until its TTL ends.

Tables (beside the key store's, in the same file):
- `budget_reservations` (id, request_id, created_at, deadline, charges JSON)
- `burst_grants` (id, budget, instance, amount, starts_at, until, reason,
  created_at)

Single process: one gateway per state file holds reservations (several
gateways sharing counters need the Redis store, issue 7).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from spendgate.ledger.open import sqlite_path
from spendgate.ledger.store import LedgerStore
from spendgate.state.memory import MemoryCounterStore
from spendgate.state.store import Amount, Charge, Refusal, Usage

log = logging.getLogger("spendgate.state")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_reservations (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    deadline REAL NOT NULL,
    charges TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_reservations_deadline ON budget_reservations (deadline);
CREATE TABLE IF NOT EXISTS burst_grants (
    id TEXT PRIMARY KEY,
    budget TEXT,
    instance TEXT NOT NULL,
    amount TEXT NOT NULL,
    starts_at REAL NOT NULL,
    until REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS burst_grants_until ON burst_grants (until);
"""

_INSERT = "INSERT OR REPLACE INTO budget_reservations (id, request_id, created_at, deadline, charges) VALUES (?, ?, ?, ?, ?)"


def request_id_of(reservation_id: str) -> str:
    """The call a reservation belongs to: ids are `<request_id>` or `<request_id>/<holder>`."""
    return reservation_id.partition("/")[0]


# ---- (de)serialising charges and amounts ---------------------------------------------------


def _amount_out(a: Amount | None) -> Any:
    return None if a is None else (a if isinstance(a, int) else format(a, "f"))


def _amount_in(v: Any) -> Amount | None:
    return None if v is None else (v if isinstance(v, int) else Decimal(v))


def charges_json(charges: Sequence[Charge]) -> str:
    """What a restart needs of each charge: its counter, amount and bucket expiry.
    (Limits and checked buckets only matter when admitting, which has happened.)"""
    return orjson.dumps([[c.counter, _amount_out(c.amount), c.expires_at] for c in charges]).decode()


def charges_from_json(text: str) -> list[Charge]:
    out = []
    for counter, amount, expires_at in orjson.loads(text):
        amt = _amount_in(amount)
        assert amt is not None
        out.append(Charge(counter, amt, None, (), expires_at))
    return out


# ---- the state file ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GrantRow:
    id: str
    budget: str | None  # None: every budget covering the instance
    instance: str
    amount: Decimal
    starts_at: float
    until: float
    reason: str
    created_at: float


@dataclass(frozen=True, slots=True)
class PersistedReservation:
    id: str
    request_id: str
    created_at: float
    deadline: float
    charges: list[Charge]


class StateDB:
    """The state SQLite file's budget tables. One connection, used under a lock
    (by the write-behind thread, and by start-up and admin calls that run off
    the event loop)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 10000")
        if self.path != ":memory:":
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.OperationalError:
                log.warning("could not switch %s to WAL mode; continuing", self.path)
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(_SCHEMA)

    @classmethod
    def open(cls, url: str) -> "StateDB":
        """The state file `state.url` names (SQLite: `sqlite:///path`, a bare path, or `sqlite:///:memory:`)."""
        return cls(sqlite_path(url))

    # grants (GrantStore)

    def insert_grant(self, g: GrantRow) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO burst_grants (id, budget, instance, amount, starts_at, until, reason, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (g.id, g.budget, g.instance, format(g.amount, "f"), g.starts_at, g.until, g.reason, g.created_at),
            )

    def load_grants(self, now: float | None = None) -> list[GrantRow]:
        """Grants not yet ended (all when `now` is None); ended ones stay in the table as an audit trail."""
        sql = "SELECT id, budget, instance, amount, starts_at, until, reason, created_at FROM burst_grants"
        params: tuple[Any, ...] = ()
        if now is not None:
            sql += " WHERE until > ?"
            params = (now,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at, id", params).fetchall()
        return [GrantRow(r[0], r[1], r[2], Decimal(r[3]), r[4], r[5], r[6], r[7]) for r in rows]

    # reservations

    def load_reservations(self) -> list[PersistedReservation]:
        with self._lock:
            rows = self._db.execute("SELECT id, request_id, created_at, deadline, charges FROM budget_reservations").fetchall()
        return [PersistedReservation(r[0], r[1], r[2], r[3], charges_from_json(r[4])) for r in rows]

    def delete_reservations(self, ids: Sequence[str]) -> None:
        self.apply([], list(ids), None)

    def apply(self, inserts: list[tuple[Any, ...]], deletes: list[str], expired_before: float | None) -> None:
        """One write-behind batch, in one transaction."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if inserts:
                    db.executemany(_INSERT, inserts)
                if deletes:
                    db.executemany("DELETE FROM budget_reservations WHERE id = ?", [(d,) for d in deletes])
                if expired_before is not None:
                    db.execute("DELETE FROM budget_reservations WHERE deadline <= ?", (expired_before,))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def count_reservations(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM budget_reservations").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---- the write-behind counter store ----------------------------------------------------------


@dataclass(slots=True)
class Recovery:
    """What start-up found in the state file."""

    reopen: list[PersistedReservation] = field(default_factory=list)  # open reservations to count again
    dropped: int = 0  # reservations whose request is in the ledger (the ledger counts it)
    expired: int = 0  # reservations past their TTL


class DurableCounterStore:
    """`CounterStore` = a `MemoryCounterStore` whose reservations of money are
    also written behind to SQLite. Checks and counters stay in memory (atomic
    on the event loop); the file only remembers what is open.

    Only money (Decimal) charges are kept: calls still running upstream when
    the gateway went down may still be billed, but counts (requests, tokens,
    concurrency slots) describe this process's traffic and restart empty — a
    restored concurrency slot would block a key for a whole TTL."""

    def __init__(
        self,
        db: StateDB,
        inner: MemoryCounterStore | None = None,
        *,
        flush_interval_ms: float = 50,
    ) -> None:
        self.db = db
        self.inner = inner or MemoryCounterStore()
        self.used_now = self.inner.used_now  # reads are the memory store's, without a second call
        self.flush_interval_s = flush_interval_ms / 1000.0
        # What the file must learn, kept under one lock (the event loop and the
        # writer thread both touch it; each holds it for a few dict operations):
        self._lock = threading.Lock()
        self._acquire, self._release = self._lock.acquire, self._lock.release
        self._fresh: dict[str, tuple[Any, ...]] = {}  # opened since the last batch: (id, created, deadline, charges)
        self._kept: set[str] = set()  # in the file (written, or restored) and not yet closed
        self._deletes: list[str] = []  # in the file and since closed
        self._expired_before: float | None = None  # the file drops reservations with deadline <= this
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition(self._lock)
        self._pending = False  # a batch is taken by the thread and not yet written
        self.failed_batches = 0

    # ---- CounterStore (the event loop) ----------------------------------------------------

    async def reserve(self, reservation_id: str, charges: Sequence[Charge], now: float, ttl_s: float) -> Refusal | None:
        """See `reserve_now`."""
        return self.reserve_now(reservation_id, charges, now, ttl_s)

    async def settle(self, reservation_id: str, actual: Mapping[str, Amount], now: float) -> None:
        """See `settle_now`."""
        self.settle_now(reservation_id, actual, now)

    async def release(self, reservation_id: str) -> None:
        """See `release_now`."""
        self.release_now(reservation_id)

    # The operations without a coroutine, for stages that know the store is in
    # process (`state.store.in_process_ops`); the async contract calls them.

    def reserve_now(self, reservation_id: str, charges: Sequence[Charge], now: float, ttl_s: float) -> Refusal | None:
        """The memory store's reserve; an admitted reservation holding money is noted for the writer."""
        refusal = self.inner.reserve_now(reservation_id, charges, now, ttl_s)
        if refusal is None:
            money: Sequence[Charge] = tuple(charges)  # usually all of them (budgets); a copy: the caller's list may change
            for c in charges:
                if type(c.amount) is not Decimal:
                    money = [c for c in charges if type(c.amount) is Decimal]
                    break
            if money:
                row = (reservation_id, now, now + ttl_s, money)
                self._acquire()  # not `with`: half the cost, and this runs for every call
                try:
                    self._fresh[reservation_id] = row
                finally:
                    self._release()
        return refusal

    def settle_now(self, reservation_id: str, actual: Mapping[str, Amount], now: float) -> None:
        self.inner.settle_now(reservation_id, actual, now)
        self._closed(reservation_id)

    def release_now(self, reservation_id: str) -> None:
        self.inner.release_now(reservation_id)
        self._closed(reservation_id)

    def _closed(self, reservation_id: str) -> None:
        self._acquire()
        try:
            if self._fresh.pop(reservation_id, None) is None and reservation_id in self._kept:
                self._kept.discard(reservation_id)  # written by an earlier batch: delete its row
                self._deletes.append(reservation_id)
        finally:
            self._release()

    async def expire(self, now: float) -> int:
        n = self.inner.expire_now(now)
        with self._lock:
            self._expired_before = now  # the file drops the same reservations by their deadline
            if n:
                is_open = self.inner.is_open
                for rid in [rid for rid in self._fresh if not is_open(rid)]:
                    del self._fresh[rid]
                self._kept = {rid for rid in self._kept if is_open(rid)}
        return n

    async def usage(self, counters: Sequence[str]) -> Usage:
        return await self.inner.usage(counters)

    async def seed(self, counter: str, settled: Amount, expires_at: float) -> None:
        await self.inner.seed(counter, settled, expires_at)

    async def close(self) -> None:
        """Write everything queued, stop the thread, close the file (blocking work off the loop)."""
        await asyncio.to_thread(self.stop)

    # ---- start-up ------------------------------------------------------------------------

    def recover(self, ledger: LedgerStore | None, now: float) -> Recovery:
        """Read what a previous run left (blocking: call it off the event loop,
        before serving), then hand the result to `reopen` on the event loop.

        A reservation whose request has ledger rows is dropped (the ledger
        counts the call's real cost); one past its deadline is dropped; the
        rest are to be reopened, counting until they settle or their TTL ends.
        """
        rows = self.db.load_reservations()
        found = Recovery()
        if not rows:
            return found
        in_ledger = _requests_in_ledger(ledger, {r.request_id for r in rows}) if ledger is not None else set()
        drop = []
        for r in rows:
            if r.request_id in in_ledger:
                drop.append(r.id)
                found.dropped += 1
            elif r.deadline <= now:
                drop.append(r.id)
                found.expired += 1
            else:
                found.reopen.append(r)
        if drop:
            self.db.delete_reservations(drop)
        log.info(
            "budget state: %d reservations to restore, %d already in the ledger, %d expired",
            len(found.reopen),
            found.dropped,
            found.expired,
        )
        return found

    def reopen(self, recovery: Recovery) -> int:
        """Count the recovered open reservations again (on the event loop). They
        are already in the file, so nothing is written."""
        for r in recovery.reopen:
            self.inner.restore(r.id, r.charges, r.created_at, r.deadline)
            with self._lock:
                self._kept.add(r.id)
        return len(recovery.reopen)

    # ---- the write-behind thread ---------------------------------------------------------------

    def start(self) -> "DurableCounterStore":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spendgate-state-writer", daemon=True)
            self._thread.start()
        return self

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Block until everything noted so far is written (tests, shutdown)."""
        if self._thread is None:
            self._write_batch()
            return True
        self._wake.set()
        with self._idle:
            return self._idle.wait_for(
                lambda: not self._fresh and not self._deletes and self._expired_before is None and not self._pending, timeout
            )

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        self._stop = True
        self._wake.set()
        if thread is not None:
            thread.join(timeout=30.0)
        self._write_batch()  # anything left (or everything, if no thread ran)
        self.db.close()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self._write_batch()

    def _write_batch(self) -> None:
        """Write what is open now and was not yet written, and delete what closed since.

        Taken under the lock, in one step: a reservation is either in this
        batch (and from then on in `_kept`, so its close deletes the row) or
        still in `_fresh` for the next one; never lost, never left behind.
        """
        with self._idle:
            fresh, self._fresh = self._fresh, {}
            deletes, self._deletes = self._deletes, []
            expired_before, self._expired_before = self._expired_before, None
            self._kept.update(fresh)
            self._pending = True
        try:
            if fresh or deletes or expired_before is not None:
                rows = [(rid, request_id_of(rid), created, deadline, charges_json(charges)) for rid, created, deadline, charges in fresh.values()]
                self.db.apply(rows, deletes, expired_before)
        except Exception:  # noqa: BLE001 - keep the thread alive; the next batch may succeed
            self.failed_batches += 1
            log.exception("could not write %d budget reservation changes to %s", len(fresh) + len(deletes), self.db.path)
        finally:
            with self._idle:
                self._pending = False
                self._idle.notify_all()


def _requests_in_ledger(ledger: LedgerStore, request_ids: set[str]) -> set[str]:
    """Which of these requests have finished, as far as the ledger knows: a row
    for an attempt that answered the client (ok or client_disconnect). A failed
    attempt's row does not count: the call may have been failing over, its next
    attempt still running upstream when the gateway went down."""
    found: set[str] = set()
    ids = sorted(request_ids)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        rows = ledger.query(
            f"SELECT DISTINCT request_id FROM usage_events WHERE status != 'error' "
            f"AND request_id IN ({', '.join('?' * len(chunk))})",
            chunk,
        )
        found.update(r[0] for r in rows)
    return found
