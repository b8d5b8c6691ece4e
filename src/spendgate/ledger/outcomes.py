"""Outcome storage: what became of a request or a session, beside the events.

Two side tables in the ledger database, both written only through
`store.write` (the events stay append-only):

- `outcomes` (from the feedback API and `/v1/outcomes`) keyed by (`key_id`,
  `request_id`): request ids are client-chosen (`POST /v1/spendgate/events`),
  so two keys may use the same one without meeting, exactly like sessions.
  Besides the outcome and score it holds `value` (business value, exact
  decimal text), `feature` and `team` (resolved from the key's own events of
  the request when the outcome is recorded, so reports need no join back to
  the events);
- `session_outcomes` keyed by (`key_id`, `session_id`): a session is the
  caller's own label, so two keys may use the same one without meeting.

The latest word counts: recording an outcome again replaces the whole record.
`ensure_schema` is additive (new columns, a new table) except for one rebuild:
an `outcomes` table keyed on `request_id` alone (ledgers from before) is copied
into the per-key table in one transaction. It is idempotent and safe to run
from several processes at once.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from spendgate.ledger.sqlite import OUTCOMES_SQL, money_text

# The key id of the allow-any-key mode (no keys configured): the same text as
# spendgate.controls.identify.ANY_KEY_ID, which events and outcomes made
# without a key carry (not imported: the gateway's controls import the ledger).
ANY_KEY_ID = "any-key"

# columns the feedback API's table gained for unit economics (tables from before)
OUTCOME_COLUMNS = {"value": "TEXT", "feature": "TEXT", "team": "TEXT"}

# the rebuild of an `outcomes` table keyed on request_id alone, in one
# transaction. The copy reads whatever table is there when the transaction
# runs (old or already rebuilt by another process: the same rows come out), so
# running it twice is harmless. An old row without a key gets ANY_KEY_ID (the
# old primary key makes request_id unique, so the new key is unique too).
_REKEY_TABLE = "outcomes_rekeyed"
_REKEY = (
    f"DROP TABLE IF EXISTS {_REKEY_TABLE}",
    OUTCOMES_SQL.replace("CREATE TABLE IF NOT EXISTS outcomes (", f"CREATE TABLE {_REKEY_TABLE} ("),
    f"INSERT INTO {_REKEY_TABLE} (key_id, request_id, outcome, score, ts, value, feature, team) "
    f"SELECT coalesce(key_id, '{ANY_KEY_ID}'), request_id, outcome, score, ts, value, feature, team FROM outcomes",
    "DROP TABLE outcomes",
    f"ALTER TABLE {_REKEY_TABLE} RENAME TO outcomes",
)
assert OUTCOMES_SQL.startswith("CREATE TABLE IF NOT EXISTS outcomes (")

SESSION_OUTCOMES_SQL = """CREATE TABLE IF NOT EXISTS session_outcomes (
    key_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    value TEXT,
    feature TEXT,
    team TEXT,
    ts REAL NOT NULL,
    PRIMARY KEY (key_id, session_id)
)"""
INDEXES = (
    "CREATE INDEX IF NOT EXISTS outcomes_ts ON outcomes (ts)",
    "CREATE INDEX IF NOT EXISTS session_outcomes_ts ON session_outcomes (ts)",
    "CREATE INDEX IF NOT EXISTS usage_events_session_id ON usage_events (session_id)",
)

# set on a store object once its ledger has the schema (attached to the store
# itself: it goes with it, and a later store never inherits it)
_READY = "_spendgate_outcomes_schema"


def _keyed_per_key(table_info: list[tuple[Any, ...]]) -> bool:
    """Whether `outcomes` (PRAGMA table_info rows) is keyed by (key_id, request_id)."""
    pk = {row[1]: row[5] for row in table_info if row[5]}
    notnull = {row[1] for row in table_info if row[3]}
    return pk == {"key_id": 1, "request_id": 2} and "key_id" in notnull


def ensure_schema(store: Any) -> None:
    """Bring this ledger's outcome tables up to date (once per store object)."""
    if getattr(store, _READY, False):
        return
    for _ in range(3):  # another process may add a column between our look and our ALTER
        info = store.query("PRAGMA table_info(outcomes)")
        have = {r[1] for r in info}
        stmts: list[tuple[str, tuple[Any, ...]]] = [] if have else [(OUTCOMES_SQL, ())]
        stmts += [(f"ALTER TABLE outcomes ADD COLUMN {c} {t}", ()) for c, t in OUTCOME_COLUMNS.items() if have and c not in have]
        if have and not _keyed_per_key(info):
            stmts += [(s, ()) for s in _REKEY]
        stmts += [(SESSION_OUTCOMES_SQL, ())] + [(s, ()) for s in INDEXES]
        try:
            store.write(stmts)
            break
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise
    else:
        raise RuntimeError("the ledger's outcome tables kept changing while being migrated")
    try:
        setattr(store, _READY, True)
    except AttributeError:  # a store that takes no attributes checks each time (cheap)
        pass


@dataclass(frozen=True, slots=True)
class Owner:
    """A key's request or session, as that key's own events describe it."""

    key_ids: frozenset[str]  # {the key} when it has events of the id, else empty
    feature: str | None
    team: str | None


def _most_common(values: list[str | None]) -> str | None:
    """The most frequent non-empty value (ties: the first in sort order)."""
    counts = Counter(v for v in values if v)
    if not counts:
        return None
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def _owner(rows: list[tuple[Any, ...]], key_id: str) -> Owner:
    return Owner(frozenset([key_id]) if rows else frozenset(), _most_common([r[0] for r in rows]), _most_common([r[1] for r in rows]))


def request_owner(store: Any, request_id: str, key_id: str) -> Owner:
    """The request as this key made it: other keys' events with the same
    (client-chosen) request id are theirs, and tell this key nothing."""
    return _owner(store.query("SELECT feature, team FROM usage_events WHERE request_id = ? AND key_id = ?", (request_id, key_id)), key_id)


def session_owner(store: Any, session_id: str, key_id: str) -> Owner:
    """The session as this key saw it (other keys' events with the same label are theirs)."""
    return _owner(store.query("SELECT feature, team FROM usage_events WHERE session_id = ? AND key_id = ?", (session_id, key_id)), key_id)


def _value_text(value: Decimal | None) -> str | None:
    return None if value is None else money_text(value)


def record_request_outcome(
    store: Any, request_id: str, outcome: str, *, key_id: str | None, ts: float,
    score: float | None = None, value: Decimal | None = None, feature: str | None = None, team: str | None = None,
) -> None:  # fmt: skip
    """Store (or replace) this key's outcome of a request (no key: ANY_KEY_ID's);
    another key's outcome of the same request id is a different record."""
    ensure_schema(store)
    store.write([(
        "INSERT INTO outcomes (key_id, request_id, outcome, score, ts, value, feature, team) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(key_id, request_id) DO UPDATE SET outcome = excluded.outcome, score = excluded.score, "
        "ts = excluded.ts, value = excluded.value, feature = excluded.feature, team = excluded.team",
        (key_id if key_id is not None else ANY_KEY_ID, request_id, outcome, score, ts, _value_text(value), feature, team),
    )])  # fmt: skip


def record_session_outcome(
    store: Any, session_id: str, outcome: str, *, key_id: str, ts: float,
    value: Decimal | None = None, feature: str | None = None, team: str | None = None,
) -> None:  # fmt: skip
    """Store (or replace) a session's outcome: one per key and session, so it counts once."""
    ensure_schema(store)
    store.write([(
        "INSERT INTO session_outcomes (key_id, session_id, outcome, value, feature, team, ts) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(key_id, session_id) DO UPDATE SET outcome = excluded.outcome, value = excluded.value, "
        "feature = excluded.feature, team = excluded.team, ts = excluded.ts",
        (key_id, session_id, outcome, _value_text(value), feature, team, ts),
    )])  # fmt: skip
