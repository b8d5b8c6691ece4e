"""Balancing among a model's deployments: each strategy, cooldowns last, rpm/tpm spreading."""

from __future__ import annotations

import heapq
import random
from collections import Counter
from decimal import Decimal

import pytest

from spendgate.config import Deployment
from spendgate.routing.balance import Balancer
from spendgate.routing.health import SERVER_ERROR, Health
from spendgate.routing.schema import HealthConfig
from routing_fakes import Clock, dep


def setup(*deps: Deployment, seed: int = 7, price_of=None, cfg: HealthConfig | None = None):
    clock = Clock()
    health = Health(cfg or HealthConfig(allowed_fails=1, cooldown_s=30), deps, clock=clock)
    return Balancer(health, price_of=price_of, rng=random.Random(seed)), health, clock


def names(ds: list[Deployment]) -> list[str]:
    return [d.name for d in ds]


def trip(health: Health, name: str) -> None:
    probe = health.start(name)
    health.end(name, ok=False, failure=SERVER_ERROR, probe=probe)


A, B, C = dep("a"), dep("b"), dep("c")


def test_ordered_is_config_order():
    bal, _, _ = setup(A, B, C)
    assert names(bal.order([A, B, C], "ordered")) == ["a", "b", "c"]
    assert names(bal.order([C, A], "ordered")) == ["c", "a"]


def test_order_returns_a_new_list_and_never_drops():
    bal, _, _ = setup(A, B, C)
    deps = [A, B, C]
    for strategy in ("ordered", "weighted", "least_busy", "latency", "cost"):
        out = bal.order(deps, strategy)
        assert out is not deps and sorted(names(out)) == ["a", "b", "c"]
    assert names(deps) == ["a", "b", "c"]
    assert bal.order([A], "weighted") == [A]
    assert bal.order([], "cost") == []


def test_unknown_strategy_is_an_error():
    bal, _, _ = setup(A, B)
    with pytest.raises(ValueError):
        bal.order([A, B], "fastest")
    with pytest.raises(ValueError):
        bal.order([A], "fastest")


def test_weighted_shares_within_tolerance():
    deps = [dep("a", weight=1), dep("b", weight=2), dep("c", weight=7)]
    bal, _, _ = setup(*deps, seed=1234)
    n = 10_000
    firsts = Counter(bal.order(deps, "weighted")[0].name for _ in range(n))
    expected = {"a": 0.1, "b": 0.2, "c": 0.7}
    for name, p in expected.items():
        assert abs(firsts[name] / n - p) < 0.03, (name, firsts)
    chi2 = sum((firsts[k] - n * p) ** 2 / (n * p) for k, p in expected.items())
    assert chi2 < 13.82  # df = 2, p = 0.001


def test_weighted_zero_weight_is_failover_only_and_rest_is_heaviest_first():
    deps = [dep("a", weight=1), dep("z", weight=0), dep("b", weight=3)]
    bal, _, _ = setup(*deps)
    seen = Counter()
    for _ in range(2000):
        out = names(bal.order(deps, "weighted"))
        seen[out[0]] += 1
        assert out[-1] == "z"  # failover only, after the weighted ones
        assert sorted(out) == ["a", "b", "z"]
        if out[0] == "a":
            assert out == ["a", "b", "z"]
        else:
            assert out == ["b", "a", "z"]
    assert seen["z"] == 0 and seen["a"] > 0 and seen["b"] > seen["a"]


def test_weighted_all_zero_is_config_order():
    deps = [dep("a", weight=0), dep("b", weight=0)]
    bal, _, _ = setup(*deps)
    assert names(bal.order(deps, "weighted")) == ["a", "b"]


def test_least_busy_prefers_the_idle_one():
    bal, health, _ = setup(A, B, C)
    for _ in range(3):
        health.start("a")
    health.start("c")
    assert names(bal.order([A, B, C], "least_busy")) == ["b", "c", "a"]
    health.start("b")
    health.start("b")
    assert names(bal.order([A, B, C], "least_busy")) == ["c", "b", "a"]


def test_least_busy_ties_go_by_weight_then_config_order():
    deps = [dep("a", weight=1), dep("b", weight=2), dep("c", weight=1)]
    bal, _, _ = setup(*deps)
    assert names(bal.order(deps, "least_busy")) == ["b", "a", "c"]


def simulate_uneven_latency(strategy: str) -> tuple[Counter, Counter]:
    """Calls arrive every 50 ms; `slow` answers in 1 s, `fast` in 0.1 s. The
    calls each deployment got, and the most it had in flight at once."""
    slow, fast = dep("slow"), dep("fast")
    bal, health, clock = setup(slow, fast)
    latency = {"slow": 1.0, "fast": 0.1}
    pending: list[tuple[float, int, str]] = []
    sent: Counter = Counter()
    peak: Counter = Counter()
    for i in range(2000):
        clock.t = 1000.0 + i * 0.05
        while pending and pending[0][0] <= clock.t:
            _, _, name = heapq.heappop(pending)
            health.end(name, ok=True, latency_s=latency[name])
        choice = bal.order([slow, fast], strategy)[0].name
        health.start(choice)
        sent[choice] += 1
        peak[choice] = max(peak[choice], health.in_flight(choice))
        heapq.heappush(pending, (clock.t + latency[choice], i, choice))
    return sent, peak


def test_least_busy_under_uneven_latency():
    sent, peak = simulate_uneven_latency("least_busy")
    assert sent["fast"] > 6 * sent["slow"]  # the fast one takes the bulk
    assert peak["slow"] <= 3 and peak["fast"] <= 3  # nothing piles up
    # equal weights, for contrast, split the calls evenly and pile them up on the slow one
    sent, peak = simulate_uneven_latency("weighted")
    assert abs(sent["fast"] - sent["slow"]) < 200
    assert peak["slow"] >= 15


def test_latency_explores_unmeasured_then_picks_the_fastest():
    bal, health, _ = setup(A, B, C)
    health.start("a")
    health.end("a", ok=True, latency_s=0.5)
    # b and c have no sample yet: they go first so they get measured
    assert names(bal.order([A, B, C], "latency")) == ["b", "c", "a"]
    health.start("b")  # b is being measured: c goes first, b after the measured ones
    assert names(bal.order([A, B, C], "latency")) == ["c", "a", "b"]
    health.end("b", ok=True, latency_s=0.2)
    health.start("c")
    health.end("c", ok=True, latency_s=0.9)
    assert names(bal.order([A, B, C], "latency")) == ["b", "a", "c"]


def test_latency_follows_the_ewma():
    bal, health, _ = setup(A, B, cfg=HealthConfig(latency_alpha=0.5))
    for name, s in (("a", 0.3), ("b", 0.4)):
        health.start(name)
        health.end(name, ok=True, latency_s=s)
    assert bal.order([A, B], "latency")[0].name == "a"
    for _ in range(2):  # a slows down
        health.start("a")
        health.end("a", ok=True, latency_s=1.0)
    assert bal.order([A, B], "latency")[0].name == "b"


def test_cost_picks_the_cheapest_and_asks_each_price_once():
    asked = Counter()
    prices = {"a": Decimal("2.50"), "b": Decimal("0.15"), "c": None}

    def price_of(d: Deployment) -> Decimal | None:
        asked[d.name] += 1
        return prices[d.name]

    bal, _, _ = setup(A, B, C, price_of=price_of)
    for _ in range(5):
        assert names(bal.order([A, B, C], "cost")) == ["b", "a", "c"]  # unknown price last
    assert asked == {"a": 1, "b": 1, "c": 1}


def test_cost_ties_keep_config_order():
    bal, _, _ = setup(A, B, price_of=lambda d: Decimal("1"))
    assert names(bal.order([B, A], "cost")) == ["b", "a"]


@pytest.mark.parametrize("strategy", ["ordered", "weighted", "least_busy", "latency", "cost"])
def test_cooling_deployments_go_last_in_cooldown_order(strategy):
    bal, health, clock = setup(A, B, C, price_of=lambda d: Decimal(1))
    trip(health, "a")
    clock.advance(10)
    trip(health, "b")  # a has 20 s left, b 30 s
    assert names(bal.order([A, B, C], strategy)) == ["c", "a", "b"]


def test_all_cooling_still_tries_the_least_cooled_first():
    bal, health, clock = setup(A, B, C)
    trip(health, "b")
    clock.advance(5)
    trip(health, "c")
    clock.advance(5)
    trip(health, "a")
    assert names(bal.order([A, B, C], "ordered")) == ["b", "c", "a"]


def test_half_open_deployment_is_tried_again_and_its_probe_admitted():
    bal, health, clock = setup(A, B)
    trip(health, "a")
    assert names(bal.order([A, B], "ordered")) == ["b", "a"]
    clock.advance(30)
    assert names(bal.order([A, B], "ordered")) == ["a", "b"]  # cooled down: back in its place
    assert health.start("a") is True  # this call is the probe
    assert names(bal.order([A, B], "ordered")) == ["b", "a"]  # no second probe meanwhile
    health.end("a", ok=True, latency_s=0.1, probe=True)
    assert names(bal.order([A, B], "ordered")) == ["a", "b"]


def test_rpm_spreads_calls_across_deployments():
    a, b = dep("a", rpm=10), dep("b", rpm=10)
    bal, health, clock = setup(a, b)
    sent = []
    for _ in range(25):  # 25 calls within one second, ordered strategy
        first = bal.order([a, b], "ordered")[0]
        health.start(first.name)
        sent.append(first.name)
    assert sent[:10] == ["a"] * 10 and sent[10:20] == ["b"] * 10
    # both full: no drop, the strategy's order among them
    assert names(bal.order([a, b], "ordered")) == ["a", "b"]
    clock.advance(60)
    assert bal.order([a, b], "ordered")[0].name == "a"


def test_tpm_spreads_by_the_call_size():
    a, b = dep("a", tpm=1000), dep("b", tpm=10_000)
    bal, health, _ = setup(a, b)
    health.start("a", tokens=800)
    assert names(bal.order([a, b], "ordered", tokens=100)) == ["a", "b"]
    assert names(bal.order([a, b], "ordered", tokens=300)) == ["b", "a"]


def test_no_headroom_goes_before_cooling():
    a, b, c = dep("a", rpm=1), dep("b"), dep("c")
    bal, health, _ = setup(a, b, c)
    health.start("a")
    health.end("a", ok=True)
    trip(health, "b")
    assert names(bal.order([a, b, c], "ordered")) == ["c", "a", "b"]


def test_weighted_among_those_with_headroom_only():
    a, b, c = dep("a", weight=5, rpm=1), dep("b", weight=1), dep("c", weight=1)
    bal, health, _ = setup(a, b, c)
    health.start("a")
    for _ in range(200):
        out = names(bal.order([a, b, c], "weighted"))
        assert out[0] in ("b", "c") and out[2] == "a"
