"""The in-process `CounterStore`: buckets and open reservations in dicts.

Atomicity: every operation is a plain function (`reserve_now`, …) that the
`async` method of the contract calls without awaiting anything, so on one
event loop it runs from start to end with no other task in between — each
operation is one critical section, with no lock. Use a store only from its
event loop's thread (it is not thread-safe).

Each operation is written to map 1:1 onto a Redis Lua script (issue 7): the
docstrings give the exact semantics a script must reproduce. Data model:

- bucket `counter` → {settled, reserved, expires_at}: money as Decimal,
  counts as int; a missing bucket reads as zeros.
- reservation `id` → {charges (counter, amount, ...), deadline}: what the
  reservation added to `reserved`, so settle/release can take it out again.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

from spendgate.state.store import Amount, Charge, Refusal, Usage


class _Bucket:
    __slots__ = ("settled", "reserved", "expires_at")

    def __init__(self, settled: Amount, reserved: Amount, expires_at: float) -> None:
        self.settled = settled
        self.reserved = reserved
        self.expires_at = expires_at


class _Open:
    __slots__ = ("charges", "created", "deadline")

    def __init__(self, charges: tuple[Charge, ...], created: float, deadline: float) -> None:
        self.charges = charges
        self.created = created
        self.deadline = deadline


class MemoryCounterStore:
    """`CounterStore` in memory: the default, and the reference semantics."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._open: dict[str, _Open] = {}
        self._expiry: list[tuple[float, str]] = []  # heap of (expires_at, counter), one entry per bucket

    # ---- CounterStore -----------------------------------------------------------------

    async def reserve(self, reservation_id: str, charges: Sequence[Charge], now: float, ttl_s: float) -> Refusal | None:
        """All or nothing; see `reserve_now`."""
        return self.reserve_now(reservation_id, charges, now, ttl_s)

    async def settle(self, reservation_id: str, actual: Mapping[str, Amount], now: float) -> None:
        """See `settle_now`."""
        self.settle_now(reservation_id, actual, now)

    async def release(self, reservation_id: str) -> None:
        """See `release_now`."""
        self.release_now(reservation_id)

    async def expire(self, now: float) -> int:
        """See `expire_now`."""
        return self.expire_now(now)

    async def usage(self, counters: Sequence[str]) -> Usage:
        """Σ settled and Σ reserved over `counters` (missing buckets count 0)."""
        settled: Amount = 0
        reserved: Amount = 0
        buckets = self._buckets
        for name in counters:
            b = buckets.get(name)
            if b is not None:
                settled += b.settled
                reserved += b.reserved
        return Usage(settled, reserved)

    # ---- the operations, synchronously ----------------------------------------------------
    #
    # The async methods above are the `CounterStore` contract; these are their
    # bodies (the semantics a Redis script reproduces), callable without a
    # coroutine by code that knows the store is in process: the durable store,
    # and the budget stage's reads of usage.

    def reserve_now(self, reservation_id: str, charges: Sequence[Charge], now: float, ttl_s: float) -> Refusal | None:
        """All or nothing: admit the reservation only if every charge fits.

        1. For each charge with a `limit`: used = Σ (settled + reserved) over
           its `checked` buckets; if used + amount > limit, change nothing and
           return Refusal(charge, used) for the first such charge. Every charge
           is checked against the state before this call (give each charge its
           own counter; a reservation naming a counter twice is refused with
           ValueError).
        2. Otherwise add each amount to its bucket's `reserved` (creating the
           bucket; its `expires_at` becomes the larger of old and new), and
           record the reservation with deadline = now + ttl_s.

        An id that is already open raises ValueError (one reservation per id;
        a second holder for the same call needs its own id, e.g. `<id>/rl`).
        No charges: nothing is recorded.
        """
        if not charges:
            return None
        if reservation_id in self._open:
            raise ValueError(f"reservation {reservation_id!r} is already open")
        get = self._buckets.get
        n = len(charges)
        if n > 1 and (charges[0].counter == charges[1].counter if n == 2 else len({c.counter for c in charges}) != n):
            raise ValueError("a reservation must not charge the same counter twice")
        for c in charges:
            limit = c.limit
            if limit is None:
                continue
            check = c.check
            if check:
                used: Amount = 0
                for name in check:
                    b = get(name)
                    if b is not None:
                        used += b.settled + b.reserved
            else:
                b = get(c.counter)
                used = 0 if b is None else b.settled + b.reserved
            if used + c.amount > limit:
                return Refusal(c, used)
        charges = tuple(charges)
        self._apply(charges)
        self._open[reservation_id] = _Open(charges, now, now + ttl_s)
        return None

    def settle_now(self, reservation_id: str, actual: Mapping[str, Amount], now: float) -> None:
        """Close the reservation: for each of its charges, reserved -= amount
        and settled += actual[counter] (0 when `actual` does not name it).

        Late settle (the id is not open: its TTL expired, or it never was):
        each `actual` amount is still added to `settled` of its bucket if the
        bucket exists — the money was spent — and buckets already dropped
        (a finished window) are left alone. Counters in `actual` that the
        reservation did not charge are ignored otherwise.
        """
        op = self._open.pop(reservation_id, None)
        buckets = self._buckets
        if op is None:
            for counter, amount in actual.items():
                b = buckets.get(counter)
                if b is not None:
                    b.settled += amount
            return
        for c in op.charges:
            b = buckets.get(c.counter)
            if b is None:  # not reachable through this class: buckets with reservations are never dropped
                b = self._new_bucket(c.counter, c.expires_at)
            b.reserved -= c.amount
            b.settled += actual.get(c.counter, 0)

    def release_now(self, reservation_id: str) -> None:
        """Close the reservation without spend: reserved -= amount per charge. Unknown id: no-op."""
        op = self._open.pop(reservation_id, None)
        if op is not None:
            self._unreserve(op)

    def expire_now(self, now: float) -> int:
        """Release every reservation with deadline <= now; drop every bucket
        with 0 < expires_at <= now that holds no reservation (one that still
        does is dropped on a later call, after it is settled). Returns the
        number of reservations released."""
        released = [rid for rid, op in self._open.items() if op.deadline <= now]
        for rid in released:
            self._unreserve(self._open.pop(rid))
        heap, buckets = self._expiry, self._buckets
        keep: list[tuple[float, str]] = []
        while heap and heap[0][0] <= now:
            when, name = heapq.heappop(heap)
            b = buckets.get(name)
            if b is None or b.expires_at != when:
                continue  # already dropped, or its expiry moved (a newer heap entry exists)
            if b.reserved:
                keep.append((when, name))
            else:
                del buckets[name]
        for entry in keep:
            heapq.heappush(heap, entry)  # retried next time; `when <= now` keeps them at the top
        return len(released)

    def used_now(self, counters: Sequence[str]) -> Amount:
        """Σ (settled + reserved) over `counters`: what `usage` sums, as one amount."""
        used: Amount = 0
        get = self._buckets.get
        for name in counters:
            b = get(name)
            if b is not None:
                used += b.settled + b.reserved
        return used

    async def seed(self, counter: str, settled: Amount, expires_at: float) -> None:
        """Set the bucket's settled amount (create it if needed) and its
        expires_at; `reserved` is untouched. Setting, never adding, makes a
        repeated seed harmless."""
        b = self._buckets.get(counter)
        if b is None:
            b = self._new_bucket(counter, expires_at)
        elif b.expires_at != expires_at:
            b.expires_at = expires_at
            if expires_at:
                heapq.heappush(self._expiry, (expires_at, counter))
        b.settled = settled

    async def close(self) -> None:
        return None

    # ---- recovery (durable state) ------------------------------------------------------

    def restore(self, reservation_id: str, charges: Iterable[Charge], created: float, deadline: float) -> None:
        """Re-open a reservation that was admitted before a restart: its amounts
        are added to `reserved` unchecked (it was admitted once already).
        Lua: the apply half of `reserve`, without the check."""
        charges = tuple(charges)
        if not charges or reservation_id in self._open:
            return
        self._apply(charges)
        self._open[reservation_id] = _Open(charges, created, deadline)

    # ---- inspection (tests, status) ----------------------------------------------------

    def open_reservations(self) -> int:
        return len(self._open)

    def is_open(self, reservation_id: str) -> bool:
        return reservation_id in self._open

    def bucket(self, counter: str) -> tuple[Amount, Amount, float] | None:
        """(settled, reserved, expires_at) of a bucket, or None."""
        b = self._buckets.get(counter)
        return None if b is None else (b.settled, b.reserved, b.expires_at)

    # ---- internals ---------------------------------------------------------------------

    def _apply(self, charges: tuple[Charge, ...] | Sequence[Charge]) -> None:
        buckets = self._buckets
        for c in charges:
            b = buckets.get(c.counter)
            if b is None:
                b = self._new_bucket(c.counter, c.expires_at)
            elif c.expires_at > b.expires_at and b.expires_at:
                b.expires_at = c.expires_at
                heapq.heappush(self._expiry, (c.expires_at, c.counter))
            b.reserved += c.amount

    def _unreserve(self, op: _Open) -> None:
        buckets = self._buckets
        for c in op.charges:
            b = buckets.get(c.counter)
            if b is not None:
                b.reserved -= c.amount

    def _new_bucket(self, counter: str, expires_at: float) -> _Bucket:
        b = self._buckets[counter] = _Bucket(0, 0, expires_at)
        if expires_at:
            heapq.heappush(self._expiry, (expires_at, counter))
        return b
