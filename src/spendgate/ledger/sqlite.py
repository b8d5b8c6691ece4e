"""The SQLite ledger: one row per UsageEvent, money as exact decimal text.

Money (`cost`, `list_cost`, `saved`) is stored as TEXT holding the exact
decimal (`format(d, "f")`), never as REAL. Reports add it up with `dsum(x)`,
an aggregate registered on every connection that sums with `decimal.Decimal`
at unlimited precision and returns text, so the ledger's sum and every
report's total agree to the last digit.

Concurrency: one write connection, guarded by a lock (the ledger writer's
thread is its only user in the gateway), and one read-only connection per
reading thread. The database runs in WAL mode, so readers never block the
writer and the writer never blocks readers.
"""

from __future__ import annotations

import dataclasses
import decimal
import logging
import math
import operator
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from spendgate.analytics import rollups
from spendgate.ledger.events import EVENT_FIELDS, UsageEvent

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TABLE = "usage_events"

MONEY_FIELDS = ("cost", "list_cost", "saved")
JSON_FIELDS = ("tags", "prefix_hashes")

INDEXES = {
    "usage_events_ts_start": "ts_start",
    "usage_events_team_ts_start": "team, ts_start",
    "usage_events_model_used_ts_start": "model_used, ts_start",
    "usage_events_request_id": "request_id",
    # a dashboard filtered on one user (or a few: top-N series) reads that
    # user's events directly; no rollup holds user x model x hour
    "usage_events_user_ts_start": '"user", ts_start',
}

# What callers said of a request's result (POST /v1/spendgate/feedback and
# /v1/outcomes), one record per key and request: request ids are client-chosen
# (ingest), so two keys may use the same one without meeting. Joined to the
# request's events by (key_id, request_id); the events themselves stay
# append-only. Ledgers whose table is keyed on request_id alone are rebuilt by
# spendgate.ledger.outcomes.ensure_schema.
OUTCOMES_SQL = """CREATE TABLE IF NOT EXISTS outcomes (
    key_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    score REAL,
    ts REAL NOT NULL,
    value TEXT,
    feature TEXT,
    team TEXT,
    PRIMARY KEY (key_id, request_id)
)"""

_WRITES_EVENTS = re.compile(
    rf"\b(?:insert(?:\s+or\s+\w+)?\s+into|replace\s+into|update(?:\s+or\s+\w+)?|delete\s+from|drop\s+table|alter\s+table)\s+[\"'`]?{TABLE}\b",
    re.IGNORECASE,
)

# An exact context: addition never rounds (precision grows with the operands).
EXACT = decimal.Context(
    prec=decimal.MAX_PREC,
    Emax=decimal.MAX_EMAX,
    Emin=decimal.MIN_EMIN,
    traps=[decimal.InvalidOperation, decimal.Inexact],
)


class InvalidEvent(ValueError):
    """An event that can never be stored (a NaN cost, an unstorable value).

    `index` is its position in the batch given to `append`; the ledger writer
    sets it aside (logged, spilled) and writes the rest of the batch.
    """

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"event #{index} in batch: {message}")
        self.index = index


# --- schema ---------------------------------------------------------------

_SQL_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "REAL", "bool": "INTEGER"}


def _column_type(name: str, annotation: str) -> str:
    if name in MONEY_FIELDS or name in JSON_FIELDS:
        return "TEXT"
    base = annotation.replace(" ", "").removesuffix("|None")
    try:
        return _SQL_TYPES[base]
    except KeyError:
        raise TypeError(
            f"UsageEvent.{name}: no SQLite column type for {annotation!r}; teach ledger/sqlite.py"
        ) from None


_FIELDS = {f.name: f for f in dataclasses.fields(UsageEvent)}
COLUMNS: dict[str, str] = {name: _column_type(name, str(_FIELDS[name].type)) for name in EVENT_FIELDS}
"""Column name -> SQLite type, one per UsageEvent field, in field order."""


def _schema_sql() -> list[str]:
    cols = []
    for name, sql_type in COLUMNS.items():
        if name == "event_id":
            cols.append(f"    {name} {sql_type} NOT NULL PRIMARY KEY")
        else:
            cols.append(f"    {name} {sql_type}")
    stmts = [f"CREATE TABLE IF NOT EXISTS {TABLE} (\n" + ",\n".join(cols) + "\n)"]
    for index, columns in INDEXES.items():
        stmts.append(f"CREATE INDEX IF NOT EXISTS {index} ON {TABLE} ({columns})")
    return stmts


_INSERT_SQL = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT(event_id) DO NOTHING"
)


# --- event <-> row --------------------------------------------------------

_get_all = operator.attrgetter(*EVENT_FIELDS)
_MONEY_POS = [EVENT_FIELDS.index(n) for n in MONEY_FIELDS]
_JSON_POS = [EVENT_FIELDS.index(n) for n in JSON_FIELDS]
_EVENT_ID_POS = EVENT_FIELDS.index("event_id")
_float_warned = False


def money_text(value: Any) -> str:
    """The exact decimal text stored for a money value."""
    global _float_warned
    if isinstance(value, float):
        # Floats should never reach the ledger; keep the intended value (its
        # shortest repr) rather than the binary expansion, and say so once.
        if not _float_warned:
            _float_warned = True
            log.warning("a money field arrived as float (%r); costs must be Decimal", value)
        value = Decimal(repr(value))
    elif not isinstance(value, Decimal):
        value = Decimal(value if isinstance(value, (int, str)) else str(value))
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {value}")
    return format(value, "f")


def _to_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def event_to_row(event: UsageEvent) -> list[Any]:
    """One row's values, in COLUMNS order."""
    row = list(_get_all(event))
    for pos in _MONEY_POS:
        row[pos] = money_text(row[pos])
    for pos in _JSON_POS:
        row[pos] = _to_json(row[pos])
    event_id = row[_EVENT_ID_POS]
    if not isinstance(event_id, str) or not event_id:
        raise ValueError(f"event_id must be a non-empty string, got {event_id!r}")
    return row


def _reader(name: str) -> Callable[[Any], Any]:
    """Column value -> field value; NULL in a non-optional field -> its default."""
    f = _FIELDS[name]
    if f.default is not dataclasses.MISSING:
        default: Callable[[], Any] = lambda d=f.default: d  # noqa: E731
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory
    else:  # pragma: no cover - every UsageEvent field has a default
        default = lambda: None  # noqa: E731
    optional = "None" in str(f.type)
    if name in MONEY_FIELDS:
        return lambda v: Decimal(v) if v is not None else default()
    if name in JSON_FIELDS:
        return lambda v: orjson.loads(v) if v is not None else default()
    if COLUMNS[name] == "INTEGER" and str(f.type).startswith("bool"):
        return lambda v: bool(v) if v is not None else (None if optional else default())
    if optional:
        return lambda v: v
    return lambda v: v if v is not None else default()


_READERS = [_reader(n) for n in EVENT_FIELDS]


def row_to_event(row: Sequence[Any]) -> UsageEvent:
    return UsageEvent(*[read(v) for read, v in zip(_READERS, row)])


# --- dsum -----------------------------------------------------------------


class DecimalSum:
    """SQLite aggregate `dsum(x)`: exact decimal sum of text (or integer) values.

    NULLs are skipped; like `sum()`, nothing to add (no rows, or only NULLs)
    gives NULL, so write `coalesce(dsum(cost), '0')` where a zero is wanted.
    The result is text, e.g. '12.000000123456789'; parse it with Decimal().
    """

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, float):
            value = repr(value)
        amount = Decimal(value)
        self.total = amount if self.total is None else EXACT.add(self.total, amount)

    def finalize(self) -> str | None:
        return None if self.total is None else format(self.total, "f")


# --- the store ------------------------------------------------------------


class SQLiteLedger:
    """`LedgerStore` on one SQLite file (WAL mode, synchronous=NORMAL)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = str(path)
        self._memory = self.path == ":memory:"
        self._busy_timeout_s = busy_timeout_s
        if not self._memory:
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.path = str(Path(self.path).expanduser())
        self._write_lock = threading.RLock()
        self._closed = False
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        self._conn = self._connect()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    # connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_s,
            isolation_level=None,  # explicit transactions only
            check_same_thread=False,
        )
        conn.create_aggregate("dsum", 1, DecimalSum)
        rollups.register(conn)  # the rollups' exact upsert and nano-unit money helpers
        return conn

    def _reader_conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("the ledger is closed")
        if self._memory:  # a private in-memory database has only one connection
            return self._conn
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # schema

    def _migrate(self) -> None:
        with self._write_lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                version = row[0]
                if version is None:
                    for stmt in _schema_sql():
                        conn.execute(stmt)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                elif version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"{self.path}: ledger schema version {version} is newer than this "
                        f"spendgate understands ({SCHEMA_VERSION}); upgrade spendgate"
                    )
                conn.execute(OUTCOMES_SQL)  # additive: ledgers from before the feedback API get it too
                # (migrations from older versions go here as versions are added)
                # Additive safety net: a UsageEvent field added without a
                # migration gets its (nullable) column rather than failing inserts.
                have = {r[1] for r in conn.execute(f"PRAGMA table_info({TABLE})")}
                for name, sql_type in COLUMNS.items():
                    if name not in have:
                        log.info("ledger: adding column %s %s to %s", name, sql_type, TABLE)
                        conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {sql_type}")
                self._migrate_rollups(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _migrate_rollups(conn: sqlite3.Connection) -> None:
        """Create the rollups (analytics/rollups/) and fill them from the
        events already stored: a ledger from before rollups, or one whose
        rollup definitions changed, gets them rebuilt once here. Indexes
        added since a ledger was made are created here too."""
        for index, columns in INDEXES.items():
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (index,)).fetchone():
                log.info("ledger: creating index %s", index)
                conn.execute(f"CREATE INDEX {index} ON {TABLE} ({columns})")
        if rollups.installed(conn):
            after = rollups.stale_after(conn, TABLE)
            if after is not None:  # events stored by a spendgate that kept no rollups
                SQLiteLedger._catch_up_rollups(conn, after)
            return
        n = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
        if n:
            log.info("ledger: building rollups from %d events (once)", n)
        for stmt in (*rollups.drop_sql(), *rollups.schema_sql()):
            conn.execute(stmt)
        rollups.build(conn, TABLE)

    @staticmethod
    def _catch_up_rollups(conn: sqlite3.Connection, after: int) -> None:
        """Fold the events past the rollups' high-water mark into them."""
        n = 0
        while True:
            rows = conn.execute(
                f"SELECT rowid, {', '.join(COLUMNS)} FROM {TABLE} WHERE rowid > ? ORDER BY rowid LIMIT 5000", (after,)
            ).fetchall()
            if not rows:
                break
            rollups.apply(conn, [row_to_event(r[1:]) for r in rows])
            after, n = rows[-1][0], n + len(rows)
        rollups.mark(conn)
        log.warning("ledger: %d events were written without rollups (an older spendgate?); added to the rollups", n)

    @property
    def schema_version(self) -> int:
        return int(self.query("SELECT max(version) FROM schema_version")[0][0])

    # LedgerStore

    def append(self, events: Sequence[UsageEvent], *, stored: list[UsageEvent] | None = None) -> int:
        """Write events in one transaction; returns how many were new.

        An event whose `event_id` is already stored is skipped, so a batch
        sent twice is counted once. `stored`, when given, receives the events
        that were new (what the writer's listeners may count). Raises
        `InvalidEvent` (nothing written) when one event can never be stored.
        """
        if not events:
            return 0
        rows = []
        for i, event in enumerate(events):
            try:
                rows.append(event_to_row(event))
            except Exception as exc:
                raise InvalidEvent(i, str(exc)) from exc
        with self._write_lock:
            if self._closed:
                raise RuntimeError("the ledger is closed")
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                # only events not stored yet (nor earlier in this batch) reach the rollups
                fresh = self._new_events(conn, events)
                before = conn.total_changes
                conn.executemany(_INSERT_SQL, rows)
                added = conn.total_changes - before
                rollups.apply(conn, fresh)
                rollups.mark(conn)
            except (sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError) as exc:
                conn.execute("ROLLBACK")
                bad = self._find_bad_row(rows)
                if bad is None:
                    raise
                raise InvalidEvent(bad, str(exc)) from exc
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if stored is not None:
                stored.extend(fresh)
            return added

    @staticmethod
    def _new_events(conn: sqlite3.Connection, events: Sequence[UsageEvent]) -> list[UsageEvent]:
        """The batch's events whose event_id is not stored yet, first of each id only."""
        by_id: dict[str, UsageEvent] = {}
        for e in events:
            by_id.setdefault(e.event_id, e)
        ids = list(by_id)
        for i in range(0, len(ids), 900):
            chunk = ids[i : i + 900]
            for (event_id,) in conn.execute(
                f"SELECT event_id FROM {TABLE} WHERE event_id IN ({', '.join('?' * len(chunk))})", chunk
            ):
                del by_id[event_id]
        return list(by_id.values())

    def _find_bad_row(self, rows: list[list[Any]]) -> int | None:
        """Which row sqlite3 refuses (an unsupported value type), by trying each."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            for i, row in enumerate(rows):
                try:
                    conn.execute(_INSERT_SQL, row)
                except (sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError):
                    return i
            return None
        finally:
            conn.execute("ROLLBACK")

    def record_outcome(self, request_id: str, outcome: str, score: float | None, key_id: str | None, ts: float) -> None:
        """Store (or replace: the latest word counts) this key's outcome of a request
        (no key: the allow-any-key mode's id); the table is migrated first if old."""
        from spendgate.ledger.outcomes import record_request_outcome  # it imports this module

        record_request_outcome(self, request_id, outcome, key_id=key_id, ts=ts, score=score)

    def write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        """Run writing statements in one transaction on the ledger's side tables
        (outcomes, alert state); returns the rows changed. Events themselves
        are written only by `append` (a statement that would change them is refused)."""
        for sql, _params in statements:
            if _WRITES_EVENTS.search(sql):
                raise ValueError(f"{TABLE} is append-only: write events with append(), not write()")
        with self._write_lock:
            if self._closed:
                raise RuntimeError("the ledger is closed")
            conn = self._conn
            before = conn.total_changes
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    conn.execute(sql, tuple(params))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return conn.total_changes - before

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run read-only SQL (the connection refuses writes); `dsum(x)` is available."""
        return self._reader_conn().execute(sql, tuple(params)).fetchall()

    def events(self, since: float | None = None, until: float | None = None) -> Iterator[UsageEvent]:
        """Events with since <= ts_start < until, oldest first."""
        where, params = time_window(since, until)
        cur = self._reader_conn().execute(
            f"SELECT {', '.join(COLUMNS)} FROM {TABLE}{where} ORDER BY ts_start, event_id", params
        )
        try:
            for row in cur:
                yield row_to_event(row)
        finally:
            cur.close()

    def count(self) -> int:
        return int(self.query(f"SELECT count(*) FROM {TABLE}")[0][0])

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            with self._readers_lock:
                readers, self._readers = self._readers, []
            for conn in readers:
                conn.close()
            self._conn.close()

    def __enter__(self) -> "SQLiteLedger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteLedger({self.path!r})"


def time_window(since: float | None, until: float | None, column: str = "ts_start") -> tuple[str, list[float]]:
    """A ` WHERE` clause (or '') for since <= column < until."""
    conds, params = [], []
    if since is not None:
        if math.isnan(since):
            raise ValueError("since is NaN")
        conds.append(f"{column} >= ?")
        params.append(float(since))
    if until is not None:
        if math.isnan(until):
            raise ValueError("until is NaN")
        conds.append(f"{column} < ?")
        params.append(float(until))
    return (" WHERE " + " AND ".join(conds) if conds else ""), params
