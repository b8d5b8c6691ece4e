"""Cache entries that survive a restart: a SQLite file, written behind.

The event loop only appends to a list; a thread writes the list in one
transaction every `flush_interval_ms`, so a cache write never waits for
disk. At start-up the live entries are read back, oldest first, vectors
included (nothing is embedded again). Losing the last batch in a crash loses
only cached answers, never money: they are paid for again on the next miss.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from spendgate.cache.store import Entry
from spendgate.ledger.open import sqlite_path

log = logging.getLogger("spendgate.cache")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    policy TEXT NOT NULL,
    wire TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    feature TEXT, prompt_template TEXT, prompt_version TEXT,
    cost TEXT NOT NULL, list_cost TEXT NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    provider TEXT NOT NULL, deployment TEXT NOT NULL, model_used TEXT NOT NULL,
    partition TEXT, vector BLOB, guard TEXT
);
CREATE INDEX IF NOT EXISTS cache_entries_expires ON cache_entries (expires);
"""
_COLUMNS = (
    "key, scope, policy, wire, endpoint, model, body, created, expires, feature, prompt_template, prompt_version, "
    "cost, list_cost, input_tokens, output_tokens, provider, deployment, model_used, partition, vector, guard"
)


def _row(e: Entry) -> tuple[Any, ...]:
    vector = None if e.vector is None else e.vector.astype("float32").tobytes()
    return (
        e.key, e.scope, e.policy, e.wire, e.endpoint, e.model, e.body, e.created, e.expires, e.feature,
        e.prompt_template, e.prompt_version, str(e.cost), str(e.list_cost), e.input_tokens, e.output_tokens,
        e.provider, e.deployment, e.model_used, e.partition, vector, e.guard,
    )  # fmt: skip


def _entry(r: tuple[Any, ...]) -> Entry:
    vector = None
    if r[20] is not None:
        import numpy as np

        vector = np.frombuffer(r[20], dtype=np.float32).copy()
    return Entry(
        key=r[0], scope=r[1], policy=r[2], wire=r[3], endpoint=r[4], model=r[5], body=bytes(r[6]), created=r[7],
        expires=r[8], feature=r[9], prompt_template=r[10], prompt_version=r[11], cost=Decimal(r[12]),
        list_cost=Decimal(r[13]), input_tokens=r[14], output_tokens=r[15], provider=r[16], deployment=r[17],
        model_used=r[18], partition=r[19], vector=vector, guard=r[21],
    )  # fmt: skip


class SqlitePersistence:
    """`memory.Persistence` on a SQLite file, with a write-behind thread."""

    def __init__(self, path: str | Path, flush_interval_ms: int = 200) -> None:
        self.path = Path(path)
        self.flush_interval_s = flush_interval_ms / 1000.0
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._ops: list[tuple[str, Any]] = []
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, url: str, flush_interval_ms: int = 200) -> "SqlitePersistence | None":
        """None for `memory` (entries live in the process only)."""
        if url in ("memory", "memory://", ""):
            return None
        return cls(sqlite_path(url), flush_interval_ms)

    def load(self, now: float, limit: int) -> list[Entry]:
        """Live entries, oldest first (the newest `limit` of them); expired rows are deleted."""
        self._db.execute("DELETE FROM cache_entries WHERE expires <= ?", (now,))
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM (SELECT * FROM cache_entries ORDER BY created DESC LIMIT ?) ORDER BY created", (limit,)
        ).fetchall()
        return [_entry(r) for r in rows]

    # ---- memory.Persistence (event loop) ------------------------------------------------------

    def saved(self, entry: Entry) -> None:
        with self._lock:
            self._ops.append(("put", entry))

    def dropped(self, keys: list[str]) -> None:
        with self._lock:
            self._ops.append(("del", keys))

    def cleared(self) -> None:
        with self._lock:
            self._ops.append(("clear", None))

    # ---- the writer thread ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spendgate-cache-writer", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Write what is pending, stop the thread, close the file."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
        self._db.close()

    def flush(self) -> None:
        with self._lock:
            ops, self._ops = self._ops, []
        if not ops:
            return
        t0 = time.perf_counter()
        try:
            with self._db:
                self._db.execute("BEGIN")
                for op, arg in ops:
                    if op == "put":
                        self._db.execute(f"INSERT OR REPLACE INTO cache_entries ({_COLUMNS}) VALUES ({', '.join('?' * 22)})", _row(arg))
                    elif op == "del":
                        self._db.executemany("DELETE FROM cache_entries WHERE key = ?", [(k,) for k in arg])
                    else:
                        self._db.execute("DELETE FROM cache_entries")
        except sqlite3.Error:
            log.exception("could not write %d cache changes to %s (the cached answers stay in memory)", len(ops), self.path)
        log.debug("cache: %d changes written in %.1f ms", len(ops), (time.perf_counter() - t0) * 1000)

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()
