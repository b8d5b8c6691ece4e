"""The ledger's storage interface; SQLite implements it (PostgreSQL later)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from spendgate.ledger.events import UsageEvent


class LedgerStore(Protocol):
    """Append-only store of usage events.

    `append` is called from the ledger writer's thread, never from the event
    loop; implementations may block.
    """

    def append(self, events: Sequence[UsageEvent], *, stored: list[UsageEvent] | None = None) -> int:
        """Store the events not stored yet (by event_id); returns how many; those
        events are added to `stored` when it is given."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query (reports); `dsum(x)` sums decimal text exactly."""
        ...

    def record_outcome(self, request_id: str, outcome: str, score: float | None, key_id: str | None, ts: float) -> None:
        """What the caller said of a request's result (the feedback API); may block."""
        ...

    def events(self, since: float | None = None, until: float | None = None) -> Iterable[UsageEvent]: ...

    def close(self) -> None: ...
