"""The counter store: atomic all-or-nothing reservations, settle/release/expire,
seeding, and durable reservations across a restart."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.ledger.events import UsageEvent
from spendgate.ledger.sqlite import SQLiteLedger
from spendgate.state.durable import DurableCounterStore, StateDB, charges_from_json, charges_json, request_id_of
from spendgate.state.memory import MemoryCounterStore
from spendgate.state.store import Charge

D = Decimal


def charge(counter: str, amount: object, limit: object = None, check: tuple[str, ...] = (), expires_at: float = 0.0) -> Charge:
    return Charge(counter, amount if isinstance(amount, int) else D(str(amount)), None if limit is None else D(str(limit)) if not isinstance(limit, int) else limit, check, expires_at)


async def total(store: MemoryCounterStore | DurableCounterStore, *counters: str) -> tuple[object, object]:
    u = await store.usage(list(counters))
    return u.settled, u.reserved


# ---- atomicity -----------------------------------------------------------------------------------


async def test_concurrent_reservations_never_overshoot_and_refusals_truly_did_not_fit() -> None:
    store = MemoryCounterStore()
    limit = D("10.00")
    rng = random.Random(7)
    refused_ok: list[bool] = []
    admitted = 0

    async def one(i: int) -> None:
        nonlocal admitted
        amount = D(rng.randint(1, 150)) / 100
        await asyncio.sleep(0)
        refusal = await store.reserve(f"r{i}", [charge("team", amount, limit)], now=0.0, ttl_s=60)
        if refusal is not None:
            # the state the store refused on is the state right now: nothing ran in between
            settled, reserved = await total(store, "team")
            refused_ok.append(refusal.used == settled + reserved and refusal.used + amount > limit)
            return
        admitted += 1
        settled, reserved = await total(store, "team")
        assert settled + reserved <= limit
        await asyncio.sleep(rng.random() / 1000)
        if i % 3 == 0:
            await store.release(f"r{i}")
        else:  # spend at most what was reserved
            await store.settle(f"r{i}", {"team": amount * rng.choice([D(1), D("0.5")])}, now=1.0)

    await asyncio.gather(*(one(i) for i in range(600)))
    settled, reserved = await total(store, "team")
    assert reserved == 0
    assert settled <= limit
    assert admitted > 0 and refused_ok and all(refused_ok)
    assert store.open_reservations() == 0


async def test_reserve_is_all_or_nothing_over_every_charge() -> None:
    store = MemoryCounterStore()
    await store.seed("b", D("9"), 0)
    refusal = await store.reserve("r1", [charge("a", "1", "5"), charge("b", "2", "10")], 0, 60)
    assert refusal is not None and refusal.charge.counter == "b" and refusal.used == D("9")
    assert await total(store, "a") == (0, 0)  # nothing of the fitting charge was applied
    assert await store.reserve("r2", [charge("a", "1", "5"), charge("b", "1", "10")], 0, 60) is None
    assert await total(store, "a") == (0, D("1"))
    assert await total(store, "b") == (D("9"), D("1"))


async def test_exact_fit_is_admitted_one_cent_more_is_not() -> None:
    store = MemoryCounterStore()
    assert await store.reserve("r1", [charge("c", "4.99", "5")], 0, 60) is None
    assert await store.reserve("r2", [charge("c", "0.01", "5")], 0, 60) is None
    refused = await store.reserve("r3", [charge("c", "0.000000000001", "5")], 0, 60)
    assert refused is not None and refused.used == D("5.00")


async def test_rolling_check_sums_every_checked_bucket() -> None:
    store = MemoryCounterStore()
    await store.seed("r1", D("3"), 0)
    await store.seed("r2", D("4"), 0)
    assert await store.reserve("x", [charge("r3", "3", "10", check=("r3", "r2", "r1"))], 0, 60) is None
    refused = await store.reserve("y", [charge("r3", "1", "10", check=("r3", "r2", "r1"))], 0, 60)
    assert refused is not None and refused.used == D("10")
    # the oldest bucket left the window: room again
    assert await store.reserve("y", [charge("r4", "1", "10", check=("r4", "r3", "r2"))], 0, 60) is None


async def test_unlimited_charges_count_without_check_and_ints_work() -> None:
    store = MemoryCounterStore()
    assert await store.reserve("r", [charge("tokens", 500, None), charge("rpm", 1, 1)], 0, 60) is None
    assert (await store.reserve("s", [charge("rpm", 1, 1)], 0, 60)) is not None
    await store.settle("r", {"tokens": 420, "rpm": 1}, 1)
    assert await total(store, "tokens") == (420, 0)
    assert await total(store, "rpm") == (1, 0)


async def test_duplicate_ids_and_counters_are_errors() -> None:
    store = MemoryCounterStore()
    assert await store.reserve("r", [charge("a", "1", "5")], 0, 60) is None
    with pytest.raises(ValueError):
        await store.reserve("r", [charge("a", "1", "5")], 0, 60)
    with pytest.raises(ValueError):
        await store.reserve("s", [charge("a", "1", "5"), charge("a", "1", "5")], 0, 60)


# ---- settle / release / expire / seed ----------------------------------------------------------


async def test_settle_moves_reserved_to_actual_and_missing_counters_are_zero() -> None:
    store = MemoryCounterStore()
    await store.reserve("r", [charge("a", "2", "10"), charge("b", "2", "10")], 0, 60)
    await store.settle("r", {"a": D("0.75")}, 1)
    assert await total(store, "a") == (D("0.75"), 0)
    assert await total(store, "b") == (0, 0)
    await store.settle("r", {"a": D("1")}, 2)  # settled twice: the reservation is gone ...
    assert await total(store, "a") == (D("1.75"), 0)  # ... but spent money still counts (late settle)


async def test_release_gives_the_room_back() -> None:
    store = MemoryCounterStore()
    await store.reserve("r", [charge("a", "5", "5")], 0, 60)
    assert await store.reserve("s", [charge("a", "1", "5")], 0, 60) is not None
    await store.release("r")
    await store.release("r")  # unknown id: no-op
    assert await total(store, "a") == (0, 0)
    assert await store.reserve("s", [charge("a", "1", "5")], 0, 60) is None


async def test_expire_releases_past_ttl_and_drops_expired_buckets() -> None:
    store = MemoryCounterStore()
    await store.reserve("old", [charge("w1", "1", "10", expires_at=100)], now=0, ttl_s=30)
    await store.reserve("new", [charge("w1", "2", "10", expires_at=100)], now=20, ttl_s=30)
    assert await store.expire(30) == 1
    assert await total(store, "w1") == (0, D("2"))
    await store.settle("new", {"w1": D("1.5")}, 40)
    await store.seed("w2", D("3"), 200)
    assert await store.expire(100) == 0
    assert store.bucket("w1") is None  # window over: dropped
    assert store.bucket("w2") == (D("3"), 0, 200)


async def test_expire_keeps_a_bucket_while_it_holds_a_reservation() -> None:
    store = MemoryCounterStore()
    await store.reserve("r", [charge("w", "1", "10", expires_at=10)], now=0, ttl_s=1000)
    await store.expire(50)
    assert store.bucket("w") == (0, D("1"), 10)
    await store.settle("r", {"w": D("1")}, 60)
    await store.expire(61)
    assert store.bucket("w") is None


async def test_late_settle_after_ttl_counts_the_money_on_live_buckets() -> None:
    store = MemoryCounterStore()
    await store.reserve("r", [charge("a", "2", "10", expires_at=1000)], now=0, ttl_s=5)
    assert await store.expire(10) == 1
    await store.settle("r", {"a": D("1.25")}, 11)
    assert await total(store, "a") == (D("1.25"), 0)


async def test_seed_sets_and_is_idempotent() -> None:
    store = MemoryCounterStore()
    await store.reserve("r", [charge("a", "1", "10")], 0, 60)
    await store.seed("a", D("4"), 0)
    await store.seed("a", D("4"), 0)
    assert await total(store, "a") == (D("4"), D("1"))
    await store.seed("a", D("3"), 0)
    assert await total(store, "a") == (D("3"), D("1"))


# ---- durability ----------------------------------------------------------------------------------


def test_charges_round_trip_through_json() -> None:
    cs = [Charge("a|1", D("0.000012500000"), D("200"), ("a|1", "a|0"), 10.5, 9.0, "budget x"), Charge("t", 7, None)]
    back = charges_from_json(charges_json(cs))
    assert [(c.counter, c.amount, c.expires_at) for c in back] == [("a|1", D("0.000012500000"), 10.5), ("t", 7, 0.0)]
    assert str(back[0].amount) == "0.000012500000" and isinstance(back[1].amount, int)
    assert request_id_of("abc/rl") == "abc" and request_id_of("abc") == "abc"


def _event(request_id: str, cost: str, ts: float, **kw: object) -> UsageEvent:
    return UsageEvent(request_id=request_id, ts_start=ts, ts_end=ts, cost=D(cost), **kw)  # type: ignore[arg-type]


async def test_reservations_survive_a_restart_until_settled_or_expired(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = DurableCounterStore(StateDB(path), flush_interval_ms=5).start()
    limit = D("1.00")
    assert await store.reserve("in-flight", [charge("team", "0.60", limit)], now=100, ttl_s=900) is None
    assert await store.reserve("short", [charge("team", "0.10", limit)], now=100, ttl_s=10) is None
    assert await store.reserve("done", [charge("team", "0.20", limit)], now=100, ttl_s=900) is None
    assert store.flush()
    await store.settle("done", {"team": D("0.05")}, 101)
    assert await store.reserve("nothing", [charge("team", "0.01", limit)], now=100, ttl_s=900) is None
    await store.release("nothing")
    assert store.flush()
    store.db.close()  # a crash: no graceful stop

    again = DurableCounterStore(StateDB(path))
    found = again.recover(ledger=None, now=200)
    assert [r.id for r in found.reopen] == ["in-flight"]
    assert found.expired == 1  # "short": its TTL ran out while the gateway was down
    assert again.reopen(found) == 1
    assert await total(again, "team") == (0, D("0.60"))
    refusal = await again.reserve("next", [charge("team", "0.50", limit)], now=200, ttl_s=900)
    assert refusal is not None and refusal.used == D("0.60")  # the in-flight call still counts
    await again.settle("in-flight", {"team": D("0.30")}, 201)
    assert await again.reserve("next", [charge("team", "0.50", limit)], now=202, ttl_s=900) is None
    await again.close()


async def test_a_reservation_whose_call_is_in_the_ledger_is_dropped_not_double_counted(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = DurableCounterStore(StateDB(path), flush_interval_ms=5).start()
    await store.reserve("req-1", [charge("team", "0.60", "1")], now=100, ttl_s=900)
    await store.reserve("req-2/x", [charge("spend", "0.01", "1")], now=100, ttl_s=900)
    await store.reserve("req-3/rl", [charge("inflight", 1, 4)], now=100, ttl_s=900)  # counts are not kept
    assert store.flush()
    store.db.close()
    ledger = SQLiteLedger(":memory:")
    ledger.append([_event("req-1", "0.40", 105), _event("req-2", "0.01", 105)])

    again = DurableCounterStore(StateDB(path))
    found = again.recover(ledger, now=200)
    assert found.dropped == 2 and not found.reopen  # req-3 was never written
    assert again.db.count_reservations() == 0
    await again.close()


async def test_write_behind_skips_short_reservations_and_drops_expired_ones(tmp_path: Path) -> None:
    store = DurableCounterStore(StateDB(tmp_path / "s.db"))
    await store.reserve("a", [charge("c", "1", "5")], 0, 60)
    await store.release("a")  # opened and closed within one batch: never written
    await store.reserve("b", [charge("c", "1", "5")], 0, 60)
    await store.settle("b", {"c": D("1")}, 1)
    assert store.flush() and store.db.count_reservations() == 0
    await store.reserve("long", [charge("c", "1", "5")], 0, 60)
    await store.reserve("lost", [charge("c", "1", "5")], 0, 30)
    assert store.flush() and store.db.count_reservations() == 2
    await store.settle("long", {"c": D("1")}, 10)
    assert store.flush() and store.db.count_reservations() == 1
    assert await store.expire(31) == 1
    assert store.flush() and store.db.count_reservations() == 0
    await store.close()


async def test_close_writes_everything_queued(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = DurableCounterStore(StateDB(path), flush_interval_ms=10_000).start()
    await store.reserve("a", [charge("c", "1", "5")], 0, 600)
    await store.close()
    assert StateDB(path).count_reservations() == 1
