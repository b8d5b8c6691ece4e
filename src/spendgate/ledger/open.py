"""Open a ledger from its URL (`ledger.url` in the config file).

- `sqlite:///relative/path.db`  (three slashes: relative to the working directory)
- `sqlite:////abs/path.db`      (four slashes: absolute)
- `sqlite:///:memory:`          (a private in-memory ledger, for tests)
- `path/to/file.db`             (a bare path)
"""

from __future__ import annotations

from spendgate.ledger.sqlite import SQLiteLedger
from spendgate.ledger.store import LedgerStore

_POSTGRES = ("postgres", "postgresql", "postgresql+psycopg", "postgresql+asyncpg")


def sqlite_path(url: str) -> str:
    """The SQLite file a ledger URL names; ValueError for anything else."""
    url = url.strip()
    if not url:
        raise ValueError("empty ledger URL; use e.g. sqlite:///spendgate.db")
    if "://" not in url:
        if url.startswith("sqlite:"):
            raise ValueError(f"ledger URL {url!r}: write sqlite:///relative.db or sqlite:////absolute.db")
        return url  # a bare path
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ValueError(
                f"ledger URL {url!r}: give a path, sqlite:///relative.db or sqlite:////absolute.db"
            )
        path = rest[1:].split("?", 1)[0]
        if not path:
            raise ValueError(f"ledger URL {url!r}: the path is empty")
        return path
    if scheme in _POSTGRES:
        raise ValueError(
            f"ledger URL {url!r}: PostgreSQL ledgers are not supported yet (they come in a later "
            "release); use sqlite:///path/to/spendgate.db for now"
        )
    raise ValueError(
        f"ledger URL {url!r}: unknown scheme {scheme!r}; supported: sqlite:///relative.db, "
        "sqlite:////absolute.db or a bare file path (PostgreSQL comes in a later release)"
    )


def open_ledger(url: str) -> LedgerStore:
    """The ledger store a URL names (SQLite for now)."""
    return SQLiteLedger(sqlite_path(url))
