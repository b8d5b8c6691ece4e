"""Running window sums (`state.store.Checked`): the in-process store answers
exactly as it does summing the buckets, whatever happens to them."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal

from spendgate.state.memory import MAX_SUMS, MemoryCounterStore
from spendgate.state.store import Charge, Checked

D = Decimal


def windows(slot: int, n: int = 13) -> tuple[str, ...]:
    return tuple(f"w:{s}" for s in range(slot - n + 1, slot + 1))


def test_a_random_history_gives_the_same_answers_with_and_without_running_sums() -> None:
    """Two stores get the same operations, one with `Checked` windows (kept
    per slot, as the rate limits keep them), one with plain tuples: every
    reservation, refusal, usage and bucket must agree."""
    rnd = random.Random(11)
    plain, summed = MemoryCounterStore(), MemoryCounterStore()
    kept: dict[tuple[int, int], Checked] = {}
    open_ids: list[str] = []
    money = [D("0.000125"), D("1.5"), D("0.3333"), D("7")]
    for step in range(6000):
        slot = step // 150  # a new slot now and then: windows slide, old sums fall out of use
        now = slot * 5.0
        n = rnd.choice((1, 3, 13))
        names = windows(slot, n)
        check = kept.get((slot, n))
        if check is None:
            check = kept[(slot, n)] = Checked(names)
        op = rnd.random()
        if op < 0.45:
            rid = f"r{step}"
            amount = rnd.choice(money) if rnd.random() < 0.5 else rnd.randint(1, 40)
            limit = rnd.choice([None, D(60), 400, D("1000.5")])
            expires = now + rnd.choice([0.0, 60.0, 65.0])
            a = plain.reserve_now(rid, [Charge(names[-1], amount, limit, names, expires)], now, 30)
            b = summed.reserve_now(rid, [Charge(names[-1], amount, limit, check, expires)], now, 30)
            assert (a is None) == (b is None), step
            if a is not None and b is not None:
                assert a.used == b.used and a.charge.counter == b.charge.counter
            else:
                open_ids.append(rid)
        elif op < 0.75 and open_ids:
            rid = open_ids.pop(rnd.randrange(len(open_ids)))
            actual = {} if rnd.random() < 0.2 else {names[-1]: rnd.choice(money + [3, 0])}
            plain.settle_now(rid, actual, now)
            summed.settle_now(rid, actual, now)
        elif op < 0.85 and open_ids:
            rid = open_ids.pop(rnd.randrange(len(open_ids)))
            plain.release_now(rid)
            summed.release_now(rid)
        elif op < 0.9:
            late = {rnd.choice(names): rnd.choice(money)}  # a settle after its reservation expired
            plain.settle_now(f"gone{step}", late, now)
            summed.settle_now(f"gone{step}", late, now)
        elif op < 0.95:
            counter, amount = rnd.choice(names), rnd.choice(money + [5])
            asyncio.run(plain.seed(counter, amount, now + 70))
            asyncio.run(summed.seed(counter, amount, now + 70))
        else:
            assert plain.expire_now(now) == summed.expire_now(now)
            open_ids = [rid for rid in open_ids if plain.is_open(rid)]
        assert plain.used_now(names) == summed.used_now(check), step
        assert plain.used_now(names) == summed.used_now(names), step
    assert plain._buckets.keys() == summed._buckets.keys()
    for name in plain._buckets:
        assert plain.bucket(name) == summed.bucket(name)


def test_sums_nobody_uses_are_dropped_at_expire_and_rebuilt_on_demand() -> None:
    store = MemoryCounterStore()
    first = Checked(windows(10))
    assert store.reserve_now("a", [Charge("w:10", 5, 100, first, 200.0)], 50.0, 30) is None
    assert store.used_now(first) == 5 and len(store._sums) == 1
    store.expire_now(51.0)  # used since the last expire: kept (and marked unused)
    assert len(store._sums) == 1
    store.expire_now(52.0)  # not used since: dropped, and no bucket still points at it
    assert not store._sums and not store._watch and all(b.sums is None for b in store._buckets.values())
    second = Checked(windows(10))
    assert store.used_now(second) == 5  # a fresh sum over the same buckets
    store.settle_now("a", {"w:10": 2}, 53.0)
    assert store.used_now(second) == 2 == store.used_now(windows(10))


def test_a_dropped_bucket_leaves_every_sum_it_was_in() -> None:
    store = MemoryCounterStore()
    check = Checked(("x:1", "x:2"))
    assert store.reserve_now("a", [Charge("x:1", 4, 10, check, 10.0)], 0.0, 60) is None
    store.settle_now("a", {"x:1": 4}, 1.0)
    assert store.reserve_now("b", [Charge("x:2", 3, 10, check, 100.0)], 2.0, 60) is None
    assert store.used_now(check) == 7
    store.expire_now(20.0)  # x:1 ends (settled 4); x:2 holds a reservation
    assert store.bucket("x:1") is None and store.used_now(check) == 3 == store.used_now(("x:1", "x:2"))
    assert store.reserve_now("c", [Charge("x:1", 2, 10, check, 200.0)], 21.0, 60) is None  # x:1 comes back
    assert store.used_now(check) == 5 == store.used_now(("x:1", "x:2"))


def test_too_many_sums_start_over() -> None:
    store = MemoryCounterStore()
    keep = []
    for i in range(MAX_SUMS + 5):
        check = Checked((f"k:{i}",))
        keep.append(check)
        store.used_now(check)
    assert len(store._sums) <= MAX_SUMS
    assert store.used_now(keep[0]) == 0
