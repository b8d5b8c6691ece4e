"""CPU per call of the control stages as bench/gateway.sh sets them with
SPENDGATE_CONTROLS=1 (required tags, a cap, per-key rate limits, a global and
a per-team budget with a slowdown plan), admit + finish, in process.

    python bench/controls_micro.py [--calls 30000] [--profile] [--varied]

Calls are the harness's own request (../shared/bench/load/request_chat.json,
an 812-token prompt), parsed, identified and routed as the gateway does; that
part runs in both measurements and is subtracted, so what is printed is the
controls' own work per call (the durable store's write-behind thread
included). `--profile` prints where that time goes (cProfile). The end-to-end
A/B with the HTTP path is bench/controls_ab.sh.

`--varied` is closer to real traffic: the prompt's length changes from call
to call (5,003 lengths, more than any price memo keeps, so every worst case
is priced anew), and the controls' clock runs 5 s per 2,000 calls, so the
rate limit's sliding window always holds its 13 slots (the harness's request
repeated within one second leaves it one).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import orjson

from spendgate.config import parse_config
from spendgate.controls.assembly import Controls
from spendgate.controls.identify import Identify
from spendgate.pipeline import Call
from spendgate.pricing.catalog import Catalog
from spendgate.routing.router import RouteStage, Router
from spendgate.wire import openai as openai_wire

HERE = Path(__file__).resolve().parent
REQUEST = HERE.parent.parent / "shared" / "bench" / "load" / "request_chat.json"

BASE = """
keys:
  - {key: sk-bench-master, id: bench, tags: {team: bench, environment: bench}}
deployments:
  - {name: bench-model, provider: openai_compatible, model: bench-model, base_url: "http://127.0.0.1:9/v1", price_model: gpt-4o-mini, price_provider: openai}
"""
CONTROLS = HERE / "controls.yaml"  # the same controls bench/gateway.sh adds with SPENDGATE_CONTROLS=1
HEADERS = {"authorization": "Bearer sk-bench-master", "content-type": "application/json"}


async def build(with_controls: bool) -> tuple[list, Controls | None]:
    text = BASE + (CONTROLS.read_text().replace("@RUN_DIR@", tempfile.mkdtemp()) if with_controls else "")
    cfg = parse_config(text)
    identify = Identify(cfg, None)
    route = RouteStage(Router(cfg))
    controls = Controls(cfg, Catalog(cfg), identify, route)
    await controls.start(None)  # type: ignore[arg-type]
    return [identify, route, *(controls.stages if with_controls else [])], controls


class Varied:
    """`--varied`: the harness's request at 5,003 prompt lengths, and a clock for
    the controls that moves 5 s (one rate-limit slot) per 2,000 calls."""

    STEP_S = 5.0 / 2000

    def __init__(self, raw: bytes, lengths: int = 5003) -> None:
        base = orjson.loads(raw)
        self.raws = []
        for k in range(lengths):  # the last message made 0..lengths-1 words longer
            body = dict(base)
            body["messages"] = [dict(m) for m in base["messages"]]
            body["messages"][-1]["content"] += " x" * k
            self.raws.append(orjson.dumps(body))
        self.i = 0
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def next(self) -> bytes:
        self.i += 1
        self.now += self.STEP_S
        return self.raws[self.i % len(self.raws)]


async def run(stages: list, raw: bytes, n: int, varied: Varied | None = None) -> None:
    cost = Decimal("0.000187")
    for _ in range(n):
        if varied is not None:
            raw = varied.next()
        body = openai_wire.parse_request("chat.completions", raw)
        call = Call(wire="openai", endpoint="chat.completions", body=body, raw_body=raw, headers=dict(HEADERS), model=body["model"])
        for stage in stages:
            await stage(call)
        call.cost, call.input_tokens, call.output_tokens = cost, 812, 143
        await call.finish()


async def main(n: int, profile: bool, varied_traffic: bool = False) -> None:
    raw = REQUEST.read_bytes()
    plain, c0 = await build(False)
    full, c1 = await build(True)
    varied = None
    if varied_traffic:
        assert c1 is not None
        varied = Varied(raw)
        c1.ratelimits.clock = c1.budgets.clock = varied
        await run(full, raw, 30_000, varied)  # 75 s of slots: the window is full
    await run(plain, raw, 2000, varied)
    await run(full, raw, 2000, varied)
    gc.collect()
    gc.freeze()
    best = None
    for _ in range(3):  # best of three: the least disturbed run
        t0 = time.process_time()
        await run(plain, raw, n, varied)
        t1 = time.process_time()
        await run(full, raw, n, varied)
        t2 = time.process_time()
        added = ((t2 - t1) - (t1 - t0)) / n * 1e6
        best = added if best is None else min(best, added)
        print(f"without controls {(t1 - t0) / n * 1e6:.1f} µs, with {(t2 - t1) / n * 1e6:.1f} µs per call")
    print(f"controls add {best:.1f} µs CPU per call (best of 3)")
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        await run(full, raw, n, varied)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    for c in (c0, c1):
        assert c is not None
        await c.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=30_000)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--varied", action="store_true", help="varying prompt lengths and a full rate-limit window (see above)")
    a = p.parse_args()
    asyncio.run(main(a.calls, a.profile, a.varied))
