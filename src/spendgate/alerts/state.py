"""Alert state and history, kept in side tables of the ledger database.

`alert_state` holds one row per (rule, subject): firing or resolved, when it
fired, when it was last seen and last notified, when its current firing was
first announced (`notified_at`; empty while it was not), the last value. A
restarted gateway reads it back, so an alert still firing is not announced
again within its cooldown, and a firing nobody was told about does not
send "resolved". `alert_history` is the append-only story (fired,
notified, notify_failed, resolved) that the dashboard shows.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

from spendgate.analytics.since import format_time

STATE_SQL = """CREATE TABLE IF NOT EXISTS alert_state (
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    fired_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    last_notified REAL,
    resolved_at REAL,
    value TEXT,
    threshold TEXT,
    message TEXT,
    notified_at REAL,
    PRIMARY KEY (rule, subject)
)"""

HISTORY_SQL = """CREATE TABLE IF NOT EXISTS alert_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    rule TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    event TEXT NOT NULL,
    value TEXT,
    threshold TEXT,
    message TEXT,
    notifier TEXT,
    detail TEXT
)"""

HISTORY_INDEX_SQL = "CREATE INDEX IF NOT EXISTS alert_history_ts ON alert_history (ts)"

_STATE_COLS = ("rule", "subject", "kind", "status", "fired_at", "last_seen", "last_notified", "resolved_at", "value", "threshold", "message", "notified_at")
# columns added after the first release: (name, SQL type); older ledgers get them at start-up
_ADDED_STATE_COLS = (("notified_at", "REAL"),)
_HISTORY_COLS = ("id", "ts", "rule", "kind", "subject", "event", "value", "threshold", "message", "notifier", "detail")

Statement = tuple[str, tuple[Any, ...]]


@dataclass
class AlertState:
    rule: str
    subject: str
    kind: str
    status: str  # firing | resolved
    fired_at: float
    last_seen: float
    last_notified: float | None = None
    resolved_at: float | None = None
    value: str = ""
    threshold: str = ""
    message: str = ""
    notified_at: float | None = None  # when THIS firing was first announced; None: not (yet)

    @property
    def key(self) -> tuple[str, str]:
        return (self.rule, self.subject)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("fired_at", "last_seen", "last_notified", "resolved_at", "notified_at"):
            out[f"{name}_iso"] = format_time(out[name]) if out[name] is not None else None
        return out


class AlertStore:
    """Reads and writes the two tables through the ledger (`store.write`, `store.query`)."""

    def __init__(self, ledger: Any) -> None:
        if not hasattr(ledger, "write"):
            raise TypeError(f"alerts need a ledger with side tables (store.write); {type(ledger).__name__} has none")
        self.ledger = ledger
        ledger.write([(STATE_SQL, ()), (HISTORY_SQL, ()), (HISTORY_INDEX_SQL, ())])
        self._migrate()

    def _migrate(self) -> None:
        """Add state columns an older ledger lacks (additive; old rows keep working).

        `notified_at` of a row written before it existed: its firing was announced
        when it was notified at or after it fired (a silenced re-fire keeps an
        older `last_notified`)."""
        for _ in range(3):  # another process may add a column between our look and our ALTER
            have = {row[1] for row in self.ledger.query("PRAGMA table_info(alert_state)")}
            missing = [(name, sql_type) for name, sql_type in _ADDED_STATE_COLS if name not in have]
            if not missing:
                return
            stmts: list[Statement] = [(f"ALTER TABLE alert_state ADD COLUMN {name} {sql_type}", ()) for name, sql_type in missing]
            if "notified_at" in dict(missing):
                stmts.append(
                    (
                        "UPDATE alert_state SET notified_at = last_notified "
                        "WHERE last_notified IS NOT NULL AND last_notified >= fired_at",
                        (),
                    )
                )
            try:
                self.ledger.write(stmts)
                return
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise

    def load(self) -> dict[tuple[str, str], AlertState]:
        rows = self.ledger.query(f"SELECT {', '.join(_STATE_COLS)} FROM alert_state")
        states = [AlertState(*row) for row in rows]
        return {s.key: s for s in states}

    @staticmethod
    def save(state: AlertState) -> Statement:
        values = tuple(getattr(state, c) for c in _STATE_COLS)
        return (
            f"INSERT OR REPLACE INTO alert_state ({', '.join(_STATE_COLS)}) VALUES ({', '.join('?' * len(_STATE_COLS))})",
            values,
        )

    @staticmethod
    def record(
        ts: float,
        state: AlertState,
        event: str,
        notifier: str | None = None,
        detail: str | None = None,
    ) -> Statement:
        values = (ts, state.rule, state.kind, state.subject, event, state.value, state.threshold, state.message, notifier, detail)
        return (
            f"INSERT INTO alert_history ({', '.join(_HISTORY_COLS[1:])}) VALUES ({', '.join('?' * (len(_HISTORY_COLS) - 1))})",
            values,
        )

    def write(self, statements: list[Statement]) -> None:
        if statements:
            self.ledger.write(statements)

    def history(self, limit: int = 100, rule: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        where, params = ("WHERE rule = ?", [rule]) if rule is not None else ("", [])
        rows = self.ledger.query(
            f"SELECT {', '.join(_HISTORY_COLS)} FROM alert_history {where} ORDER BY ts DESC, id DESC LIMIT ?",
            [*params, int(limit)],
        )
        out = []
        for row in rows:
            item = dict(zip(_HISTORY_COLS, row))
            item["time"] = format_time(item["ts"])
            out.append(item)
        return out
