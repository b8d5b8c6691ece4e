"""CPU per call of the budget stage: admit (reserve) + finish (settle).

    python bench/budgets_micro.py [--calls 50000] [--budgets 1|3] [--durable [--in-flight 5000]]

With --budgets 3 (default) three budgets cover every call — a global monthly
one, a team budget with five slowdown steps (none reached), and a per-user
rolling 24h budget (25 hourly sub-buckets checked); with --budgets 1 only the
team budget. Calls are priced through the real catalog (genai-prices) and
their input bound comes from controls/tokens.py. The CPU of building and routing
the same calls is measured apart and subtracted, so what is printed is the
stage's work (admit + finish) per call, in process time: the write-behind
thread's share counts too with --durable. --in-flight N keeps N calls open
(finishing each N calls later), so with --durable every reservation outlives
a write-behind batch and is written and deleted, as real (slow) calls are.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import orjson

from spendgate.config import parse_config
from spendgate.controls.budgets import BudgetStage
from spendgate.pipeline import Call
from spendgate.pricing.catalog import Catalog
from spendgate.routing.router import RouteStage, Router
from spendgate.state.durable import DurableCounterStore, StateDB
from spendgate.state.memory import MemoryCounterStore

CONFIG = """
deployments:
  - {name: oa-4o, provider: openai, model: gpt-4o, base_url: "http://127.0.0.1:9/v1"}
  - {name: oa-mini, provider: openai, model: gpt-4o-mini, base_url: "http://127.0.0.1:9/v1"}
budgets:
  - {name: company, window: {period: month, timezone: Europe/Berlin}, limit: "1000000"}
  - name: search-monthly
    scope: {team: search}
    window: {period: month, timezone: Europe/Berlin}
    limit: "1000000"
    slowdown:
      - {at: 50, action: notify}
      - {at: 80, action: route, route: {gpt-4o: gpt-4o-mini}}
      - {at: 90, action: cap_max_tokens, max_tokens: 256}
      - {at: 95, action: refuse_batch}
      - {at: 100, action: reject}
  - {name: per-user, scope: {user: "*"}, window: {rolling: 24h}, limit: "1000000"}
"""


def make_calls(n: int) -> list[Call]:
    calls = []
    for i in range(n):
        body = {"model": "gpt-4o", "max_tokens": 512, "messages": [{"role": "user", "content": "Hello there, how are you?"}]}
        call = Call(wire="openai", endpoint="chat.completions", body=body, raw_body=orjson.dumps(body), headers={}, model="gpt-4o")
        call.tags = {"team": "search", "user": f"user-{i % 500}"}
        call.key_id = "k1"
        calls.append(call)
    return calls


async def main(n: int, durable: bool, budgets: int, in_flight: int = 0) -> None:
    cfg = parse_config(CONFIG)
    if budgets == 1:
        cfg.budgets = [b for b in cfg.budgets if b.name == "search-monthly"]
    route = RouteStage(Router(cfg))
    if durable:
        store = DurableCounterStore(StateDB(Path(tempfile.mkdtemp()) / "state.db"), flush_interval_ms=50).start()
    else:
        store = MemoryCounterStore()  # type: ignore[assignment]
    stage = BudgetStage(cfg, Catalog(cfg), store, route)
    cost = Decimal("0.000123")

    async def calls_only() -> None:  # what the gateway does anyway: build, route and hold each call
        held: collections.deque[Call] = collections.deque()
        for chunk in range(0, n, 500):
            for call in make_calls(500):
                await route(call)
                held.append(call)
                if len(held) > in_flight:
                    held.popleft()

    async def with_stage() -> None:
        held: collections.deque[Call] = collections.deque()
        for chunk in range(0, n, 500):
            for call in make_calls(500):
                await route(call)
                await stage(call)
                held.append(call)
                if len(held) > in_flight:
                    done = held.popleft()
                    done.cost = cost
                    await done.finish()
        while held:
            done = held.popleft()
            done.cost = cost
            await done.finish()
        if durable:
            assert isinstance(store, DurableCounterStore)
            store.flush()

    await with_stage()  # warm up caches and the writer
    gc.collect()
    gc.freeze()  # as the gateway does after start-up
    c0 = time.process_time()
    await calls_only()
    base = time.process_time() - c0
    c0 = time.process_time()
    await with_stage()
    cpu = time.process_time() - c0 - base
    where = f" (durable store, {in_flight} calls in flight)" if durable else ""
    print(f"{len(cfg.budgets)} budget(s) per call{where}: {cpu / n * 1e6:.1f} µs CPU per call")
    await store.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=50_000)
    p.add_argument("--durable", action="store_true")
    p.add_argument("--budgets", type=int, choices=(1, 3), default=3)
    p.add_argument("--in-flight", type=int, default=0, help="calls held open before finishing (so reservations outlive a write-behind batch)")
    a = p.parse_args()
    asyncio.run(main(a.calls, a.durable, a.budgets, a.in_flight))
