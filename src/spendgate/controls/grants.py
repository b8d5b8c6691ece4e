"""Burst grants: temporary additions to a budget instance's limit.

A grant says "+$50 to the search team's budget until Friday". It names one
instance (`team=search`, or `global`) and either one budget or every budget
having that instance (`budget = None`). The effective limit of an instance
is its baseline plus every grant active at `now` (starts_at <= now < until).

Grants live in the state file (`state/durable.py`, table `burst_grants`) and
in memory, indexed by instance, so the per-call cost is one dict lookup that
usually finds nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Protocol

from spendgate.state.durable import GrantRow

ZERO = Decimal(0)


class GrantStore(Protocol):
    """Where grants are kept (StateDB). Blocking: call it off the event loop."""

    def insert_grant(self, g: GrantRow) -> None: ...

    def load_grants(self, now: float | None = None) -> list[GrantRow]: ...


class BurstGrants:
    """The in-memory index of grants; `add` writes through to the store."""

    def __init__(self, store: GrantStore | None = None) -> None:
        self.store = store
        self._by_instance: dict[str, tuple[GrantRow, ...]] = {}
        self.any = False  # whether any grant is indexed: callers skip `extra` when none is

    def load(self, now: float) -> int:
        """Read the grants that have not ended yet (blocking; at start-up)."""
        if self.store is None:
            return 0
        grants = self.store.load_grants(now)
        self._index(grants)
        return len(grants)

    def _index(self, grants: Iterable[GrantRow]) -> None:
        by: dict[str, list[GrantRow]] = {}
        for g in grants:
            by.setdefault(g.instance, []).append(g)
        self._by_instance = {k: tuple(v) for k, v in by.items()}
        self.any = bool(self._by_instance)

    @staticmethod
    def new(budget: str | None, instance: str, amount: Decimal, until: float, reason: str, now: float | None = None) -> GrantRow:
        now = time.time() if now is None else now
        return GrantRow(f"burst_{uuid.uuid4().hex[:16]}", budget, instance, amount, now, until, reason, now)

    def add(self, grant: GrantRow) -> None:
        """Persist (blocking) and index the grant. The index is replaced, not
        mutated, so a reader on the event loop sees the old or the new one."""
        if self.store is not None:
            self.store.insert_grant(grant)
        self.add_indexed(grant)

    def add_indexed(self, grant: GrantRow) -> None:
        by = dict(self._by_instance)
        by[grant.instance] = (*by.get(grant.instance, ()), grant)
        self._by_instance = by
        self.any = True

    def extra(self, budget: str, instance: str, now: float) -> Decimal:
        """Σ of the grants active at `now` for this budget instance."""
        found = self._by_instance.get(instance)
        if not found:
            return ZERO
        total = ZERO
        for g in found:
            if g.starts_at <= now < g.until and (g.budget is None or g.budget == budget):
                total += g.amount
        return total

    def active(self, budget: str, instance: str, now: float) -> list[GrantRow]:
        return [
            g
            for g in self._by_instance.get(instance, ())
            if g.starts_at <= now < g.until and (g.budget is None or g.budget == budget)
        ]

    def prune(self, now: float) -> None:
        """Forget grants that have ended (they stay in the file as an audit trail)."""
        if any(g.until <= now for gs in self._by_instance.values() for g in gs):
            self._index(g for gs in self._by_instance.values() for g in gs if g.until > now)
