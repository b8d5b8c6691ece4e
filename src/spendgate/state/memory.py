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

Running sums (in process only; a Redis script sums): a charge whose `check`
is a `Checked` tuple (one a caller reuses while it is current, e.g. a rate
limit's 13 slots) is checked against a running Σ (settled + reserved) of
those buckets, kept up to date by every change to any of them, instead of
summing 13 buckets per call. Amounts are exact (int, Decimal), so the sum is
the same number either way. Sums no call used since the previous `expire`
are dropped there.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

from spendgate.state.store import Amount, Charge, Checked, Refusal, Usage

MAX_SUMS = 100_000  # running sums kept at most; beyond, start over (rebuilt on demand)


class _Bucket:
    __slots__ = ("settled", "reserved", "expires_at", "sums")

    def __init__(self, settled: Amount, reserved: Amount, expires_at: float, sums: list[_Sum] | None) -> None:
        self.settled = settled
        self.reserved = reserved
        self.expires_at = expires_at
        self.sums = sums  # the running sums that include this bucket (the store's `_watch` list), or None


class _Sum:
    """Σ (settled + reserved) over the buckets of one `Checked` tuple, kept current."""

    __slots__ = ("check", "used", "seen")

    def __init__(self, check: Checked) -> None:
        self.check = check  # held: its id() keys the sum, and cannot be reused while it lives
        self.used: Amount = 0
        self.seen = True  # used since the last expire


# An open reservation: a plain tuple (charges, created, deadline), one per admitted
# call (a class instance, even a named tuple, costs a Python-level call to build).
_Open = tuple[tuple[Charge, ...], float, float]
CHARGES, CREATED, DEADLINE = 0, 1, 2


class MemoryCounterStore:
    """`CounterStore` in memory: the default, and the reference semantics."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._open: dict[str, _Open] = {}
        self._expiry: list[tuple[float, str]] = []  # heap of (expires_at, counter), one entry per bucket
        self._sums: dict[int, _Sum] = {}  # id(Checked tuple) -> its running sum
        self._watch: dict[str, list[_Sum]] = {}  # bucket name -> the sums including it (the bucket's `sums`)

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
        if n > 1:
            if n == 2:
                twice = charges[0].counter == charges[1].counter
            elif n == 3:
                a, b2, c3 = charges[0].counter, charges[1].counter, charges[2].counter
                twice = a == b2 or a == c3 or b2 == c3
            else:
                twice = len({c.counter for c in charges}) != n
            if twice:
                raise ValueError("a reservation must not charge the same counter twice")
        sums = self._sums
        for c in charges:  # fields unpacked, not read by name: this runs for every call
            counter, amount, limit, check, _expires, _resets, _label = c
            if limit is None:
                continue
            if check:
                if type(check) is Checked:
                    s = sums.get(id(check))
                    if s is None or s.check is not check:
                        s = self._sum(check)
                    s.seen = True
                    used: Amount = s.used
                elif len(check) == 1:  # one bucket (calendar budgets): no sum to start from 0
                    b = get(check[0])
                    used = 0 if b is None else b.settled + b.reserved
                else:
                    used = 0
                    for name in check:
                        b = get(name)
                        if b is not None:
                            used += b.settled + b.reserved
            else:
                b = get(counter)
                used = 0 if b is None else b.settled + b.reserved
            if used + amount > limit:
                return Refusal(c, used)
        charges = tuple(charges)
        for counter, amount, _limit, _check, expires_at, _resets, _label in charges:  # `_apply`, inlined
            b = get(counter)
            if b is None:
                b = self._new_bucket(counter, expires_at)
            elif expires_at > b.expires_at and b.expires_at:
                b.expires_at = expires_at
                heapq.heappush(self._expiry, (expires_at, counter))
            b.reserved += amount
            if b.sums:
                for s in b.sums:
                    s.used += amount
        self._open[reservation_id] = (charges, now, now + ttl_s)
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
                    if b.sums:
                        for s in b.sums:
                            s.used += amount
            return
        get = actual.get
        for counter, amount, _limit, _check, expires_at, _resets, _label in op[CHARGES]:
            b = buckets.get(counter)
            if b is None:  # not reachable through this class: buckets with reservations are never dropped
                b = self._new_bucket(counter, expires_at)
            spent = get(counter, 0)
            b.reserved -= amount
            b.settled += spent
            if b.sums:
                for s in b.sums:
                    s.used += spent - amount

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
        released = [rid for rid, op in self._open.items() if op[DEADLINE] <= now]
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
                if b.sums:
                    for s in b.sums:
                        s.used -= b.settled + b.reserved
                del buckets[name]
        for entry in keep:
            heapq.heappush(heap, entry)  # retried next time; `when <= now` keeps them at the top
        self._drop_unused_sums()
        return len(released)

    def used_now(self, counters: Sequence[str]) -> Amount:
        """Σ (settled + reserved) over `counters`: what `usage` sums, as one amount."""
        if type(counters) is Checked:
            s = self._sums.get(id(counters))
            if s is None or s.check is not counters:
                s = self._sum(counters)
            s.seen = True
            return s.used
        get = self._buckets.get
        if len(counters) == 1:
            b = get(counters[0])
            return 0 if b is None else b.settled + b.reserved
        used: Amount = 0
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
        if b.sums:
            for s in b.sums:
                s.used += settled - b.settled
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
        self._open[reservation_id] = (charges, created, deadline)

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
            if b.sums:
                for s in b.sums:
                    s.used += c.amount

    def _unreserve(self, op: _Open) -> None:
        buckets = self._buckets
        for c in op[CHARGES]:
            b = buckets.get(c.counter)
            if b is not None:
                b.reserved -= c.amount
                if b.sums:
                    for s in b.sums:
                        s.used -= c.amount

    def _new_bucket(self, counter: str, expires_at: float) -> _Bucket:
        b = self._buckets[counter] = _Bucket(0, 0, expires_at, self._watch.get(counter))
        if expires_at:
            heapq.heappush(self._expiry, (expires_at, counter))
        return b

    # ---- running sums --------------------------------------------------------------------

    def _sum(self, check: Checked) -> _Sum:
        """Start keeping the running sum of `check`'s buckets (summed once here)."""
        if len(self._sums) >= MAX_SUMS:
            self._drop_sums(list(self._sums.values()))
        s = _Sum(check)
        buckets, watch = self._buckets, self._watch
        used: Amount = 0
        for name in check:
            found = watch.get(name)
            b = buckets.get(name)
            if found is None:
                found = watch[name] = []
                if b is not None:
                    b.sums = found
            found.append(s)
            if b is not None:
                used += b.settled + b.reserved
        s.used = used
        self._sums[id(check)] = s
        return s

    def _drop_unused_sums(self) -> None:
        """Drop the sums no call used since the last expire; mark the rest unused."""
        unused = []
        for s in self._sums.values():
            if s.seen:
                s.seen = False
            else:
                unused.append(s)
        if unused:
            self._drop_sums(unused)

    def _drop_sums(self, sums: list[_Sum]) -> None:
        buckets, watch = self._buckets, self._watch
        for s in sums:
            del self._sums[id(s.check)]
            for name in s.check:
                found = watch[name]
                found.remove(s)
                if not found:
                    del watch[name]
                    b = buckets.get(name)
                    if b is not None:
                        b.sums = None

