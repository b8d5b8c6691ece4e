"""CPU per call of balancing: `Balancer.order()` over 3 deployments, per strategy.

    python bench/routing_micro.py [--number 200000] [--repeat 5]

Prints µs per call (best of --repeat runs of --number calls, timeit-style) for:
- `order()` alone, every deployment healthy and without rpm/tpm limits;
- `order()` with rpm and tpm set on every deployment (the 60 s window is checked);
- `order()` with one deployment cooling down (the slow path: three groups);
- one call's full bookkeeping: `order()` + `health.start()` + `health.end()`;
- the whole routing decision as the gateway makes it, on examples/routing.yaml:
  the route stage (policy resolution + every step's failover chain, ordered by
  each model's strategy) plus one attempt's health bookkeeping, for a direct
  model, `auto` through a policy rule to a tier, and `auto` to a cascade.
The budget for the whole routing decision is 50 µs per request.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import sys
import timeit
from decimal import Decimal

from pathlib import Path

from spendgate.config import Deployment, load_config
from spendgate.pipeline import Call
from spendgate.pricing.catalog import Catalog
from spendgate.routing.router import Router
from spendgate.routing.balance import STRATEGIES, Balancer
from spendgate.routing.health import SERVER_ERROR, Health
from spendgate.routing.schema import HealthConfig


def deployments(limits: bool) -> list[Deployment]:
    kw = {"rpm": 1_000_000, "tpm": 10**12} if limits else {}
    return [
        Deployment(name=f"d{i}", provider="openai", model="m", base_url="http://127.0.0.1:9/v1", weight=w, **kw)
        for i, w in enumerate((1.0, 2.0, 3.0))
    ]


def prices(d: Deployment) -> Decimal:
    return Decimal(int(d.name[1:]) + 1) / 10


def balancer(deps: list[Deployment], cooling: bool) -> Balancer:
    health = Health(HealthConfig(allowed_fails=1, cooldown_s=1e9, max_cooldown_s=1e9), deps)
    for d in deps:  # one latency sample each, so the latency strategy compares EWMAs
        health.start(d.name)
        health.end(d.name, ok=True, latency_s=0.1 * (3 - int(d.name[1:])))
    if cooling:
        probe = health.start(deps[0].name)
        health.end(deps[0].name, ok=False, failure=SERVER_ERROR, probe=probe)
    return Balancer(health, price_of=prices, rng=random.Random(1))


def per_call_us(fn, number: int, repeat: int) -> float:
    gc.collect()
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--number", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]} on {platform.machine()} / {platform.processor() or platform.system()}")
    print(f"µs per call, 3 deployments, best of {args.repeat} × {args.number:,}\n")
    print(f"{'strategy':<12}{'order()':>10}{'+rpm/tpm':>10}{'1 cooling':>11}{'+start/end':>12}")
    for strategy in STRATEGIES:
        row = []
        for limits, cooling in ((False, False), (True, False), (False, True)):
            deps = deployments(limits)
            bal = balancer(deps, cooling)
            row.append(per_call_us(lambda: bal.order(deps, strategy, 500), args.number, args.repeat))
        deps = deployments(True)
        bal = balancer(deps, False)
        health = bal.health

        def full() -> None:
            name = bal.order(deps, strategy, 500)[0].name
            probe = health.start(name, 500)
            health.end(name, ok=True, latency_s=0.1, probe=probe)

        row.append(per_call_us(full, args.number, args.repeat))
        print(f"{strategy:<12}" + f"{row[0]:>10.2f}{row[1]:>10.2f}{row[2]:>11.2f}{row[3]:>12.2f}")
    whole_decision(args.number // 4, args.repeat)


def whole_decision(number: int, repeat: int) -> None:
    config, _ = load_config(Path(__file__).resolve().parent.parent / "examples" / "routing.yaml")
    router = Router(config, Catalog(config).blended_price)
    health = router.health
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    print("\nthe whole decision on examples/routing.yaml (route stage + one attempt's health bookkeeping)")
    for label, model, tags in (
        ("direct gpt-4.1 (least_busy, 1 fallback)", "gpt-4.1", {}),
        ("auto -> tier:small (weighted, fallback)", "auto", {"feature": "summarize"}),
        ("auto -> cascade:faq (2 steps)", "auto", {"feature": "faq"}),
    ):

        def decide() -> None:
            call = Call(wire="openai", endpoint="chat.completions", body=body, raw_body=b"", headers={}, model=model, tags=tags)
            router.route(call)
            name = call.candidates[0].name
            probe = health.start(name, 0)
            health.end(name, ok=True, latency_s=0.1, probe=probe)

        def make_call() -> None:
            Call(wire="openai", endpoint="chat.completions", body=body, raw_body=b"", headers={}, model=model, tags=tags)

        total = per_call_us(decide, number, repeat)
        baseline = per_call_us(make_call, number, repeat)  # building the Call is not routing's cost
        print(f"  {label:<44}{total - baseline:>8.2f} µs")


if __name__ == "__main__":
    main()
