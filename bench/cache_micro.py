"""CPU of the response cache's own work per call, in process.

    python bench/cache_micro.py [--calls 20000]

- miss: the cache stage on a cacheable call that misses (policy, scope, exact
  key over the harness's 3 KB request) + storing its answer after the call
  (entry, LRU insert) + the write-behind thread's SQLite insert of it;
- exact hit: the stage finding the entry + the JSON replay of a 1.2 KB answer.

The end-to-end figures over HTTP come from bench/cache_cpu.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import orjson

from spendgate.cache.memory import MemoryCache
from spendgate.cache.replay import replay_json
from spendgate.cache.schema import CacheConfig, CachePolicy
from spendgate.cache.serve import MissRecorder
from spendgate.cache.sqlite import SqlitePersistence
from spendgate.cache.stage import CacheStage
from spendgate.ledger.events import UsageEvent
from spendgate.pipeline import Call

REQUEST = Path(__file__).resolve().parent.parent.parent / "shared" / "bench" / "load" / "request_chat.json"
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 200}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 812, "completion_tokens": 143, "total_tokens": 955},
    }
)  # fmt: skip
EVENT = UsageEvent(request_id="r", cost=Decimal("0.0002076"), list_cost=Decimal("0.0002076"), provider="openai", deployment="d", model_used="gpt-4o-mini")


def make_calls(raw: bytes, n: int, header: str) -> list[Call]:
    calls = []
    for _ in range(n):
        body = orjson.loads(raw)
        call = Call(wire="openai", endpoint="chat.completions", body=body, raw_body=raw, headers={"x-spendgate-cache": header} if header else {}, model=body["model"])
        call.tags = {"team": "bench", "environment": "bench"}
        calls.append(call)
    return calls


async def main(n: int) -> None:
    raw = REQUEST.read_bytes()
    persistence = SqlitePersistence(Path(tempfile.mkdtemp()) / "cache.db")
    policy = CachePolicy(name="bench", match={"team": "bench"}, scope={"environment": "*"}, nondeterministic=True)
    stage = CacheStage(CacheConfig(url="memory", policies=[policy]), MemoryCache(persistence=persistence), None, 1.0)
    gc.collect()
    gc.freeze()

    calls = make_calls(raw, n, "refresh")  # every call a miss that stores its answer
    t0 = time.process_time()
    for call in calls:
        await stage(call)
        MissRecorder(stage, call).done(EVENT, ANSWER)
    persistence.flush()  # the writer thread's share, on this thread
    miss = (time.process_time() - t0) / n * 1e6

    calls = make_calls(raw, n, "")
    t0 = time.process_time()
    for call in calls:
        await stage(call)
        assert call.cache_hit is not None
        replay_json(call.wire, call.endpoint, orjson.loads(call.cache_hit.entry.body), request_id=call.request_id)
    hit = (time.process_time() - t0) / n * 1e6
    print(f"miss (lookup + store + SQLite write): {miss:.1f} µs CPU per call")
    print(f"exact hit (lookup + JSON replay): {hit:.1f} µs CPU per call")
    persistence.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=20_000)
    asyncio.run(main(p.parse_args().calls))
