"""Managed virtual keys in the state SQLite file, with an in-memory index.

Authentication never touches the database: the index maps a secret's SHA-256
to its key, so checking a key is one hash, one dict lookup and one
constant-time compare. Writes through this store rebuild the index at once.
Writes by another process (a second gateway on the same file) are seen by a
watcher thread that asks SQLite, at most once a second, whether anything
changed (`PRAGMA data_version`, then this store's own generation counter).
Every write stamps the key it changed with a new generation, so the index is
brought up to date by reading only the keys changed since it was built.

Tables (own names, beside the counters other parts keep in the same file):
`api_keys_meta` (schema version, generation), `api_keys` (the records) and
`api_key_secrets` (one row per secret hash; rotated-out ones carry the time
they stop working).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from spendgate.keys.controls import KeyEntry
from spendgate.keys.model import KeyBudget, KeyCreate, KeyFields, VirtualKey
from spendgate.keys.secrets import display_prefix, hash_secret, new_key_id, new_secret, same_hash
from spendgate.keys.times import timestamp
from spendgate.ledger.open import sqlite_path

log = logging.getLogger("spendgate.keys")

SCHEMA_VERSION = 2  # 2: api_keys.generation (incremental index refresh)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys_meta (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    schema_version INTEGER NOT NULL,
    generation INTEGER NOT NULL
);
INSERT OR IGNORE INTO api_keys_meta (singleton, schema_version, generation) VALUES (1, 2, 0);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    owner_team TEXT,
    owner_user TEXT,
    owner_service TEXT,
    tags TEXT NOT NULL DEFAULT '{}',
    allowed_models TEXT NOT NULL DEFAULT '[]',
    budget TEXT,
    rpm INTEGER,
    tpm INTEGER,
    concurrency INTEGER,
    max_tokens INTEGER,
    expires_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    revoked_at REAL,
    rotated_at REAL,
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS api_keys_team ON api_keys (owner_team);
CREATE TABLE IF NOT EXISTS api_key_secrets (
    secret_hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES api_keys (id),
    created_at REAL NOT NULL,
    retires_at REAL
);
CREATE INDEX IF NOT EXISTS api_key_secrets_key ON api_key_secrets (key_id);
"""

# (version it arrived in, column, its definition): added to files made by older versions
_ADDED_COLUMNS = [(2, "generation", "INTEGER NOT NULL DEFAULT 0")]
_AFTER_COLUMNS = "CREATE INDEX IF NOT EXISTS api_keys_generation ON api_keys (generation)"

_SELECT = """
SELECT k.*, (SELECT MAX(s.retires_at) FROM api_key_secrets s WHERE s.key_id = k.id) AS grace_until
FROM api_keys k
"""

# KeyFields name -> api_keys column
_COLUMNS = {
    "name": "name",
    "team": "owner_team",
    "user": "owner_user",
    "service": "owner_service",
    "tags": "tags",
    "allowed_models": "allowed_models",
    "budget": "budget",
    "rpm": "rpm",
    "tpm": "tpm",
    "concurrency": "concurrency",
    "max_tokens": "max_tokens",
    "expires_at": "expires_at",
}

Problem = Literal["revoked", "expired", "rotated"]


class KeyNotFound(LookupError):
    pass


class KeyConflict(ValueError):
    """The change does not apply to the key in its current state (e.g. rotating a revoked key)."""


@dataclass(frozen=True, slots=True)
class SecretEntry:
    key_id: str
    secret_hash: str
    retires_at: float | None  # None: the current secret


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """A presented secret that belongs to a key; `problem` says why it may not be used."""

    entry: KeyEntry
    problem: Problem | None


@dataclass(frozen=True, slots=True)
class _Index:
    """Replaced whole, never mutated: readers on other threads see one consistent version."""

    secrets: dict[str, SecretEntry]  # secret hash -> secret
    keys: dict[str, KeyEntry]  # key id -> key
    key_secrets: dict[str, tuple[str, ...]]  # key id -> its secret hashes
    generation: int


_EMPTY = _Index({}, {}, {}, -1)


class KeyStore:
    """CRUD for managed keys, and `authenticate` from memory."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()  # serialises this store's writes and reloads
        self._db = _connect(path)
        try:
            with self._lock:
                _migrate(self._db)
                self._index = self._refreshed(_EMPTY)
        except BaseException:
            self._db.close()
            raise
        self._watch_db: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # ---- the hot path: memory only -------------------------------------------------

    def check(self, secret: str, now: float) -> KeyCheck | None:
        """The key a secret belongs to (valid or not), or None for an unknown secret."""
        digest = hash_secret(secret)
        index = self._index
        found = index.secrets.get(digest)
        if found is None or not same_hash(digest, found.secret_hash):
            return None
        entry = index.keys[found.key_id]
        rec = entry.record
        if rec.revoked_at is not None:
            return KeyCheck(entry, "revoked")
        if rec.expires_at is not None and now >= rec.expires_at:
            return KeyCheck(entry, "expired")
        if found.retires_at is not None and now >= found.retires_at:
            return KeyCheck(entry, "rotated")
        return KeyCheck(entry, None)

    def authenticate(self, secret: str, now: float | None = None) -> VirtualKey | None:
        """The key record for a usable secret; None for unknown, revoked, expired or rotated-out ones."""
        found = self.check(secret, self.clock() if now is None else now)
        return found.entry.record if found is not None and found.problem is None else None

    def entry(self, key_id: str) -> KeyEntry | None:
        return self._index.keys.get(key_id)

    @property
    def has_keys(self) -> bool:
        """Whether any managed key exists (revoked ones count: revoking the last key must not reopen the gateway)."""
        return bool(self._index.keys)

    # ---- reads for the admin API (fresh from the file) -----------------------------------

    def get(self, key_id: str) -> VirtualKey:
        with self._lock:
            row = self._db.execute(_SELECT + " WHERE k.id = ?", (key_id,)).fetchone()
        if row is None:
            raise KeyNotFound(f"no key with id {key_id!r}")
        return _record(row)

    def list(self, team: str | None = None, revoked: bool | None = None) -> list[VirtualKey]:
        where, params = ["1=1"], []
        if team is not None:
            where.append("k.owner_team = ?")
            params.append(team)
        if revoked is not None:
            where.append("k.revoked_at IS NOT NULL" if revoked else "k.revoked_at IS NULL")
        with self._lock:
            rows = self._db.execute(_SELECT + f" WHERE {' AND '.join(where)} ORDER BY k.created_at, k.id", params).fetchall()
        return [_record(r) for r in rows]

    # ---- writes ------------------------------------------------------------------------

    def create(self, spec: KeyCreate, now: float | None = None) -> tuple[VirtualKey, str]:
        """A new key and its secret; the secret is not kept and cannot be shown again."""
        now = self.clock() if now is None else now
        secret = new_secret()
        key_id = new_key_id()
        values = _column_values(spec, type(spec).model_fields.keys())
        values.update(id=key_id, prefix=display_prefix(secret), created_at=now, updated_at=now)
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)

        def write(db: sqlite3.Connection) -> str:
            db.execute(f"INSERT INTO api_keys ({cols}) VALUES ({marks})", list(values.values()))
            db.execute("INSERT INTO api_key_secrets (secret_hash, key_id, created_at) VALUES (?, ?, ?)", (hash_secret(secret), key_id, now))
            return key_id

        self._write(write)
        return self.get(key_id), secret

    def update(self, key_id: str, changes: KeyFields, now: float | None = None) -> VirtualKey:
        """Change the fields `changes` sets (explicit `null` clears); never the secret."""
        now = self.clock() if now is None else now
        values = _column_values(changes, changes.model_fields_set)
        if values.get("name", "") is None:
            raise ValueError("name cannot be empty")
        values["updated_at"] = now
        assignments = ", ".join(f"{c} = ?" for c in values)

        def write(db: sqlite3.Connection) -> str:
            if db.execute(f"UPDATE api_keys SET {assignments} WHERE id = ?", [*values.values(), key_id]).rowcount == 0:
                raise KeyNotFound(f"no key with id {key_id!r}")
            return key_id

        self._write(write)
        return self.get(key_id)

    def rotate(self, key_id: str, grace_s: float = 0.0, now: float | None = None) -> tuple[VirtualKey, str]:
        """A new secret; every older one stops working `grace_s` from now (sooner if it already would)."""
        if grace_s < 0:
            raise ValueError("grace must not be negative")
        now = self.clock() if now is None else now
        secret = new_secret()
        until = now + grace_s

        def write(db: sqlite3.Connection) -> str:
            row = db.execute("SELECT revoked_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                raise KeyNotFound(f"no key with id {key_id!r}")
            if row["revoked_at"] is not None:
                raise KeyConflict(f"key {key_id} is revoked; create a new key instead of rotating it")
            db.execute(
                "UPDATE api_key_secrets SET retires_at = MIN(COALESCE(retires_at, ?), ?) WHERE key_id = ?", (until, until, key_id)
            )
            db.execute("INSERT INTO api_key_secrets (secret_hash, key_id, created_at) VALUES (?, ?, ?)", (hash_secret(secret), key_id, now))
            db.execute("UPDATE api_keys SET prefix = ?, rotated_at = ?, updated_at = ? WHERE id = ?", (display_prefix(secret), now, now, key_id))
            return key_id

        self._write(write)
        return self.get(key_id), secret

    def revoke(self, key_id: str, now: float | None = None) -> VirtualKey:
        """Stop every secret of the key at once. Final; revoking twice keeps the first time."""
        now = self.clock() if now is None else now

        def write(db: sqlite3.Connection) -> str:
            if db.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone() is None:
                raise KeyNotFound(f"no key with id {key_id!r}")
            db.execute("UPDATE api_keys SET revoked_at = ?, updated_at = ? WHERE id = ? AND revoked_at IS NULL", (now, now, key_id))
            return key_id

        self._write(write)
        return self.get(key_id)

    def _write(self, change: Callable[[sqlite3.Connection], str]) -> None:
        """One transaction: the change, a new generation stamped on the changed key;
        then the index catches up (with this change and any made elsewhere)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                key_id = change(db)
                generation = db.execute(
                    "UPDATE api_keys_meta SET generation = generation + 1 WHERE singleton = 1 RETURNING generation"
                ).fetchone()[0]
                db.execute("UPDATE api_keys SET generation = ? WHERE id = ?", (generation, key_id))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self._index = self._refreshed(self._index)

    # ---- seeing other processes' changes -------------------------------------------------

    def poll(self) -> bool:
        """Rebuild the index if another connection changed the keys; True when it did.
        Cheap when nothing changed: one `PRAGMA data_version`."""
        if self.path == ":memory:":
            return False
        if self._watch_db is None:
            self._watch_db = _connect(self.path)
        version = self._watch_db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return False
        self._data_version = version
        generation = self._watch_db.execute("SELECT generation FROM api_keys_meta").fetchone()[0]
        if generation == self._index.generation:
            return False
        with self._lock:
            before = self._index
            if generation == before.generation:
                return False
            self._index = self._refreshed(before)
        log.info("managed keys changed elsewhere: index caught up to generation %d", generation)
        return True

    def start_watching(self, interval_s: float = 1.0) -> None:
        """Poll from a daemon thread, off the request path, until `close()`."""
        if self._watcher is not None or self.path == ":memory:":
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except sqlite3.Error:
                    log.exception("checking the key store for changes failed; retrying")

        self._watcher = threading.Thread(target=loop, name="spendgate-key-watcher", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        with self._lock:
            self._db.close()
            if self._watch_db is not None:
                self._watch_db.close()
                self._watch_db = None

    def _refreshed(self, index: _Index) -> _Index:
        """`index` plus every key changed since its generation, read in one
        transaction (a consistent snapshot). Cost: the changed keys only."""
        db = self._db
        db.execute("BEGIN")
        try:
            generation = db.execute("SELECT generation FROM api_keys_meta").fetchone()[0]
            rows = db.execute(_SELECT + " WHERE k.generation > ?", (index.generation,)).fetchall()
            ids = [r["id"] for r in rows]
            found: dict[str, list[sqlite3.Row]] = {i: [] for i in ids}
            for chunk in range(0, len(ids), 500):
                part = ids[chunk : chunk + 500]
                marks = ",".join("?" * len(part))
                for r in db.execute(f"SELECT secret_hash, key_id, retires_at FROM api_key_secrets WHERE key_id IN ({marks})", part):
                    found[r["key_id"]].append(r)
        finally:
            db.execute("COMMIT")
        if not rows:
            return index if generation == index.generation else _Index(index.secrets, index.keys, index.key_secrets, generation)
        keys, secrets, key_secrets = dict(index.keys), dict(index.secrets), dict(index.key_secrets)
        for row in rows:
            key_id = row["id"]
            keys[key_id] = KeyEntry.build(_record(row))
            for old in key_secrets.get(key_id, ()):
                secrets.pop(old, None)
            mine = [SecretEntry(key_id, r["secret_hash"], r["retires_at"]) for r in found[key_id]]
            secrets.update((e.secret_hash, e) for e in mine)
            key_secrets[key_id] = tuple(e.secret_hash for e in mine)
        return _Index(secrets, keys, key_secrets, generation)


def open_key_store(url: str) -> KeyStore | None:
    """The key store in the state file `state.url` names; None (logged) when that
    is not a SQLite file, since managed keys live in SQLite for now."""
    try:
        path = sqlite_path(url)
    except ValueError as exc:
        log.warning("managed virtual keys are off: they need a SQLite state file (%s)", exc)
        return None
    return KeyStore(path)


def _migrate(db: sqlite3.Connection) -> None:
    """Create the key tables, or bring an older file's up to this version. One
    write transaction, so gateways starting together on one file do it once."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        version = db.execute("SELECT schema_version FROM api_keys_meta").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the state file's key tables are version {version}, newer than this spendgate understands "
                f"({SCHEMA_VERSION}); upgrade spendgate"
            )
        present = {r[1] for r in db.execute("PRAGMA table_info(api_keys)")}
        for _, column, definition in _ADDED_COLUMNS:
            if column not in present:
                db.execute(f"ALTER TABLE api_keys ADD COLUMN {column} {definition}")
        db.execute(_AFTER_COLUMNS)
        db.execute("UPDATE api_keys_meta SET schema_version = ? WHERE singleton = 1", (SCHEMA_VERSION,))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout = 10000")
    if path != ":memory:":
        try:
            db.execute("PRAGMA journal_mode = WAL")  # readers never wait for a writer
        except sqlite3.OperationalError:
            log.warning("could not switch %s to WAL mode; continuing", path)
    return db


def _column_values(fields: KeyFields, names: Any) -> dict[str, Any]:
    """Column values for the named fields, encoded for SQLite."""
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(fields, name)
        if name == "tags":
            value = json.dumps(value or {}, sort_keys=True)
        elif name == "allowed_models":
            value = json.dumps(value or [])
        elif name == "budget":
            value = None if value is None else value.model_dump_json(exclude_none=True)
        elif name == "expires_at":
            value = None if value is None else timestamp(value)
        out[_COLUMNS[name]] = value
    return out


def _record(row: sqlite3.Row) -> VirtualKey:
    budget = row["budget"]
    return VirtualKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        team=row["owner_team"],
        user=row["owner_user"],
        service=row["owner_service"],
        tags=json.loads(row["tags"]),
        allowed_models=tuple(json.loads(row["allowed_models"])),
        budget=None if budget is None else KeyBudget.model_validate_json(budget),
        rpm=row["rpm"],
        tpm=row["tpm"],
        concurrency=row["concurrency"],
        max_tokens=row["max_tokens"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        rotated_at=row["rotated_at"],
        grace_until=row["grace_until"],
    )

