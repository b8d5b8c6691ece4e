"""Counters and reservations: the interface every state backend implements.

Budgets and rate limits are both counters. A call *reserves* its worst case
on every counter that applies, all or nothing; when it ends it *settles* to
what it really used, or *releases* the reservation. Each operation is one
atomic step of the backend (a critical section in-process, a Lua script in
Redis), so concurrent calls can never overshoot a limit together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import NamedTuple, Protocol, Union, cast

Amount = Union[Decimal, int]


class Checked(tuple):  # type: ignore[type-arg]
    """Bucket names a caller builds once and passes in every charge while they
    are current (a rate limit's 13 slots, a rolling budget's sub-buckets),
    instead of a plain tuple. A plain tuple of names to the contract; an
    in-process store keeps a running sum per such object rather than summing
    its buckets on every call (`state/memory.py`)."""

    __slots__ = ()


class Charge(NamedTuple):
    """One amount a reservation adds to one bucket. Immutable; a named tuple
    because every admitted call builds several (a quarter of a frozen
    dataclass's construction cost)."""

    counter: str  # the bucket the amount is added to
    amount: Amount
    limit: Amount | None  # None: counted, never refused
    check: tuple[str, ...] = ()  # buckets summed against the limit (rolling windows); default: (counter,)
    expires_at: float = 0.0  # when the bucket may be dropped (0: never)
    resets_at: float | None = None  # when room comes back (Retry-After / reset headers)
    label: str = ""  # what refusals and headers call it, e.g. "budget search-monthly (team=search)"

    @property
    def checked(self) -> tuple[str, ...]:
        return self.check or (self.counter,)


# `Charge(*fields)`, all seven fields in order, without the Python-level `__new__`
# of a named tuple (hot paths build one per limit per call)
new_charge = cast(
    Callable[[tuple[str, Amount, Union[Amount, None], tuple[str, ...], float, Union[float, None], str]], Charge],
    partial(tuple.__new__, Charge),
)


@dataclass(slots=True)
class Refusal:
    """The first charge that did not fit, and how full its counter was."""

    charge: Charge
    used: Amount  # settled + reserved over the checked buckets, before this call


@dataclass(slots=True)
class Usage:
    settled: Amount = 0
    reserved: Amount = 0
    extra: dict[str, Amount] = field(default_factory=dict)


class CounterStore(Protocol):
    async def reserve(self, reservation_id: str, charges: Sequence[Charge], now: float, ttl_s: float) -> Refusal | None:
        """Add every charge as reserved, or none of them (returns the refusal)."""
        ...

    async def settle(self, reservation_id: str, actual: Mapping[str, Amount], now: float) -> None:
        """Turn a reservation into settled amounts (`actual` per counter; missing = 0)."""
        ...

    async def release(self, reservation_id: str) -> None: ...

    async def expire(self, now: float) -> int:
        """Release reservations past their TTL and drop expired buckets; returns how many."""
        ...

    async def usage(self, counters: Sequence[str]) -> Usage:
        """Settled and reserved totals over `counters`."""
        ...

    async def seed(self, counter: str, settled: Amount, expires_at: float) -> None:
        """Set a bucket's settled amount (rebuilt from the ledger); idempotent."""
        ...

    async def close(self) -> None: ...


ReserveNow = Callable[[str, Sequence[Charge], float, float], Union[Refusal, None]]
SettleNow = Callable[[str, Mapping[str, Amount], float], None]
ReleaseNow = Callable[[str], None]


def in_process_ops(store: object) -> tuple[ReserveNow | None, tuple[SettleNow, ReleaseNow] | None]:
    """`reserve`, `settle` and `release` of an in-process store of this package
    as plain functions (a coroutine per operation costs more than the
    operation), or (None, None) for any other store. Only for exactly those
    classes: a subclass may wrap the async contract, which must then be used.
    The operations are the same; the async methods only wrap them."""
    from spendgate.state.durable import DurableCounterStore
    from spendgate.state.memory import MemoryCounterStore

    if type(store) is MemoryCounterStore or type(store) is DurableCounterStore:
        return store.reserve_now, (store.settle_now, store.release_now)
    return None, None
