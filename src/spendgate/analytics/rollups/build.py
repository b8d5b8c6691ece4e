"""The rollups' tables: created, built from the events, rebuilt, and checked
against the events (version, high-water mark)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spendgate.analytics.rollups.definitions import (
    DIM_COLUMNS,
    METRICS,
    MONEY_METRICS,
    NESTS,
    ROLLUP_VERSION,
    ROLLUPS,
    SESSIONS_DAY_TABLE,
    SESSIONS_TABLE,
    Rollup,
    bucket_sql,
    q,
)
from spendgate.analytics.rollups.money import NANO_BOUND, _fast, metrics_sql

# --- schema ---------------------------------------------------------------


def _metric_columns() -> list[str]:
    cols = []
    for m in METRICS:
        cols += [f"{m}_n", f"{m}_rem"] if m in MONEY_METRICS else [m]
    return cols


def _metric_columns_ddl() -> list[str]:
    cols = []
    for m in METRICS:
        cols += [f"{m}_n INTEGER NOT NULL", f"{m}_rem TEXT"] if m in MONEY_METRICS else [f"{m} INTEGER NOT NULL"]
    return cols


def schema_sql() -> list[str]:
    stmts = []
    for r in ROLLUPS:
        cols = ["bucket INTEGER NOT NULL", *(f"{q(d)} TEXT" for d in r.dims)]
        cols += _metric_columns_ddl()
        stmts.append(f"CREATE TABLE IF NOT EXISTS {r.table} ({', '.join(cols)})")
        stmts.append(f"CREATE UNIQUE INDEX IF NOT EXISTS {r.table}_key ON {r.table} ({_key_expr(r)})")
        lead = r.dims[0] if r.dims else ""
        if lead in ("user", "tenant", "key_id", "prompt_template"):  # a filter on it (= or IN) skips the scan
            stmts.append(f"CREATE INDEX IF NOT EXISTS {r.table}_{lead} ON {r.table} ({q(lead)}, bucket)")
    stmts.append(
        f"CREATE TABLE IF NOT EXISTS {SESSIONS_TABLE} (session_id TEXT NOT NULL PRIMARY KEY, "
        "first_ts REAL NOT NULL, feature TEXT, team TEXT)"
    )
    stmts.append(f"CREATE INDEX IF NOT EXISTS {SESSIONS_TABLE}_ts ON {SESSIONS_TABLE} (first_ts)")
    stmts.append(
        f"CREATE TABLE IF NOT EXISTS {SESSIONS_DAY_TABLE} (bucket INTEGER NOT NULL, feature TEXT, team TEXT, "
        "sessions INTEGER NOT NULL)"
    )
    stmts.append(
        f"CREATE UNIQUE INDEX IF NOT EXISTS {SESSIONS_DAY_TABLE}_key ON {SESSIONS_DAY_TABLE} "
        "(bucket, ifnull(feature, char(0)), ifnull(team, char(0)))"
    )
    # high_water: the last usage_events rowid the rollups hold (see `stale_after`)
    stmts.append("CREATE TABLE IF NOT EXISTS rollup_meta (version INTEGER NOT NULL, high_water INTEGER)")
    return stmts


def _key_expr(r: Rollup) -> str:
    # NULL (untagged) is a value of its own: char(0) never appears in a tag.
    return ", ".join(["bucket", *(f"ifnull({q(d)}, char(0))" for d in r.dims)])


def drop_sql() -> list[str]:
    # the tables of versions 1-2 all have names in the current set
    return [f"DROP TABLE IF EXISTS {name}" for name in _ALL_TABLES]


_ALL_TABLES = tuple(dict.fromkeys([*(r.table for r in ROLLUPS), SESSIONS_TABLE, SESSIONS_DAY_TABLE, "rollup_meta"]))


def _parent(r: Rollup, built: Sequence[Rollup]) -> Rollup | None:
    """A rollup already built that holds r's dimensions at a bucket nesting in r's (fewest dims wins)."""
    order = {"hour": 0, "day": 1, "week": 2, "month": 2}
    fits = [p for p in built if (p.level == r.level or (p.level, r.level) in NESTS) and set(r.dims) <= set(p.dims)]
    return min(fits, key=lambda p: (-order[p.level], len(p.dims)), default=None)


def _build_order() -> list[Rollup]:
    # biggest first, so the small ones are summed from an already-built rollup instead of the events
    order = {"hour": 0, "day": 1, "week": 2, "month": 2}
    return sorted(ROLLUPS, key=lambda r: (order[r.level], -len(r.dims)))


def _build_one(r: Rollup, parent: Rollup | None, events_table: str, exact: bool, plain: bool = False) -> str:
    """INSERT ... SELECT filling r from its parent rollup or the events.

    Fast form: integer nano sums, normalized under NANO_BOUND. Exact form
    (when a group's nano sum passes int64): the exact decimal total, split."""
    if parent is None:
        src, level_col = events_table, "ts_start"
        dims = [q(DIM_COLUMNS[d]) if DIM_COLUMNS[d] == "user" else DIM_COLUMNS[d] for d in r.dims]
        metrics = metrics_sql("events", exact=exact, plain=plain and not exact)
        bucket = bucket_sql(level_col, r.level)
    else:
        src = parent.table
        dims = [q(d) for d in r.dims]
        metrics = metrics_sql("rollup", exact=exact)
        bucket = "bucket" if parent.level == r.level else bucket_sql("bucket", r.level)
    aliases = []
    i = 0
    outer = ["b", *(f"d{j}" for j in range(len(r.dims)))]
    for m in METRICS:
        if m in MONEY_METRICS:
            aliases += [f"{metrics[i]} AS {m}_s", f"{metrics[i + 1]} AS {m}_r"]
            i += 2
            if exact:
                t = f"dadd(nano_text({m}_s), {m}_r)"
                outer += [f"nano_n({t})", f"nano_rem({t})"]
            else:
                s_ = f"coalesce({m}_s, 0)"
                outer += [
                    f"CASE WHEN abs({s_}) <= {NANO_BOUND} THEN {s_} ELSE 0 END",
                    f"CASE WHEN abs({s_}) <= {NANO_BOUND} THEN {m}_r ELSE radd({m}_r, nano_text({s_})) END",
                ]
        else:
            aliases.append(f"{metrics[i]} AS {m}")
            outer.append(m)
            i += 1
    group = ", ".join(str(k + 1) for k in range(1 + len(r.dims)))
    inner = (
        f"SELECT {', '.join([f'{bucket} AS b', *(f'{d} AS d{k}' for k, d in enumerate(dims))])}, "
        f"{', '.join(aliases)} FROM {src} GROUP BY {group}"
    )
    cols = ", ".join(["bucket", *(q(d) for d in r.dims), *_metric_columns()])
    return f"INSERT INTO {r.table} ({cols}) SELECT {', '.join(outer)} FROM ({inner})"


def build(conn: Any, events_table: str = "usage_events") -> None:
    """Fill the (empty) rollup tables: the biggest from the events, each smaller
    one from an already-built rollup holding its dimensions (far fewer rows).
    A group whose nano sum passes int64 gets the exact (dsum) form instead."""
    built: list[Rollup] = []
    # one scan: if no amount has more than 9 decimals (or is huge), the group
    # sums skip the per-row remainder checks
    odd = " OR ".join(f"NOT {_fast(c)}" for c in ("cost", "list_cost", "saved"))
    plain = _fetch(conn, f"SELECT 1 FROM {events_table} WHERE {odd} LIMIT 1") is None
    for r in _build_order():
        parent = _parent(r, built)
        try:
            conn.execute(_build_one(r, parent, events_table, exact=False, plain=plain))
        except Exception as exc:  # noqa: BLE001 - sqlite3.OperationalError: integer overflow
            if "overflow" not in str(exc):
                raise
            conn.execute(f"DELETE FROM {r.table}")
            conn.execute(_build_one(r, parent, events_table, exact=True))
        built.append(r)
    for stmt in _sessions_build_sql(events_table):
        conn.execute(stmt)


def _sessions_build_sql(events_table: str) -> list[str]:
    return [
        f"INSERT INTO {SESSIONS_TABLE} (session_id, first_ts, feature, team) "
        f"SELECT session_id, min(ts_start), feature, team FROM {events_table} "
        "WHERE session_id IS NOT NULL GROUP BY session_id",  # bare columns come from the min() row
        f"INSERT INTO {SESSIONS_DAY_TABLE} (bucket, feature, team, sessions) "
        f"SELECT {bucket_sql('first_ts', 'day')}, feature, team, count(*) FROM {SESSIONS_TABLE} GROUP BY 1, 2, 3",
        f"INSERT INTO rollup_meta (version, high_water) VALUES ({ROLLUP_VERSION}, "
        f"(SELECT coalesce(max(rowid), 0) FROM {events_table}))",
    ]


def _fetch(conn: Any, sql: str) -> Any:
    if isinstance(conn, _ConnOf):
        rows = conn.store.query(sql)
        return rows[0] if rows else None
    return conn.execute(sql).fetchone()


class _ConnOf:
    """`build` over a store: each statement through `store.write` (its own transaction)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def execute(self, sql: str) -> None:
        self.store.write([(sql, ())])


def rebuild_rollups(store: Any) -> None:
    """Drop and rebuild every rollup from the events."""
    store.write([(s, ()) for s in (*drop_sql(), *schema_sql())])
    build(_ConnOf(store))


def mark(conn: Any, events_table: str = "usage_events") -> None:
    """Record that the rollups hold every event stored so far (same transaction
    as the events): a spendgate that writes events without maintaining
    rollups (an older version sharing the ledger) leaves a gap that the next
    open finds and fills (`stale_after`)."""
    conn.execute(f"UPDATE rollup_meta SET high_water = (SELECT coalesce(max(rowid), 0) FROM {events_table})")


def stale_after(conn: Any, events_table: str = "usage_events") -> int | None:
    """The rowid after which stored events are missing from the rollups, or
    None when they hold everything. Rollups from before the high-water mark
    was kept are taken as complete (they were maintained with every append)."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(rollup_meta)")}
    if "high_water" not in have:
        conn.execute("ALTER TABLE rollup_meta ADD COLUMN high_water INTEGER")
    hw = conn.execute("SELECT max(high_water) FROM rollup_meta").fetchone()[0]
    last = conn.execute(f"SELECT coalesce(max(rowid), 0) FROM {events_table}").fetchone()[0]
    if hw is None:
        mark(conn, events_table)
        return None
    return int(hw) if last > hw else None


def installed(conn: Any) -> bool:
    """Whether this database has the current rollups."""
    row = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'rollup_meta'").fetchone()
    if row is None:
        return False
    v = conn.execute("SELECT max(version) FROM rollup_meta").fetchone()[0]
    return v == ROLLUP_VERSION
