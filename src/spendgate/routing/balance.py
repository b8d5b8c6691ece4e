"""Balancing: the order in which to try one model's deployments.

`Balancer.order(deps, strategy, tokens)` returns every deployment, the first
the one to call, the others as failover:

- ordered: config order;
- weighted: a random pick in proportion to `weight` (weight 0: failover only),
  the rest by weight, heaviest first;
- least_busy: fewest calls in flight (ties: heavier weight, then config order);
- latency: lowest EWMA latency; a deployment without a sample yet goes first
  (while it has no call in flight) so that it gets measured;
- cost: lowest price (`price_of`, asked once per deployment; unknown prices last).

Whatever the strategy, a deployment that is cooling down goes last (least
cooldown left first), and one whose rpm/tpm would be exceeded by this call goes
after those with room. Nothing is dropped: when every deployment is cooling,
the one closest to the end of its cooldown is still tried first.

Every call of the gateway runs this, so it is kept small: one pass over a
handful of deployments, one clock read, at most one short sort.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from operator import itemgetter

from spendgate.config import Deployment
from spendgate.routing.health import DeploymentHealth, Health

STRATEGIES = ("ordered", "weighted", "least_busy", "latency", "cost")

_first = itemgetter(0)


def _neg_weight(d: Deployment) -> float:
    return -d.weight


class Balancer:
    def __init__(
        self,
        health: Health,
        price_of: Callable[[Deployment], Decimal | None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`price_of` gives a deployment's price for the cost strategy, any
        comparable per-call figure (e.g. a blended price per million tokens);
        None or a None answer: unknown, ranked last."""
        self.health = health
        self.price_of = price_of
        self.rng = rng or random.Random()
        self._prices: dict[str, tuple[int, Decimal]] = {}

    def price_key(self, d: Deployment) -> tuple[int, Decimal]:
        key = self._prices.get(d.name)
        if key is None:
            price = self.price_of(d) if self.price_of is not None else None
            key = self._prices[d.name] = (1, Decimal(0)) if price is None else (0, Decimal(price))
        return key

    def order(self, deps: Sequence[Deployment], strategy: str, tokens: int = 0) -> list[Deployment]:
        """All of `deps`, in the order to try them, for a call of `tokens` (toward tpm)."""
        if len(deps) < 2:
            if strategy not in STRATEGIES:
                raise ValueError(f"unknown routing strategy {strategy!r}")
            return list(deps)
        health = self.health
        now = health.clock()
        states = health.deps
        ready: list[Deployment] = []
        tight: list[Deployment] | None = None
        cooling: list[tuple[float, Deployment]] | None = None
        for d in deps:
            s = states.get(d.name) or health.get(d.name)
            if s.tripped:
                left = s.cooling_left(now)
                if left is not None:
                    if cooling is None:
                        cooling = []
                    cooling.append((left, d))
                    continue
            if (s.rpm is None and s.tpm is None) or s.fits(now, tokens):
                ready.append(d)
            else:
                if tight is None:
                    tight = []
                tight.append(d)
        if tight is None and cooling is None:
            return self._rank(ready, strategy, states, True)
        out = self._rank(ready, strategy, states, True) if ready else ready
        if tight is not None:
            out += self._rank(tight, strategy, states, not out)
        if cooling is not None:
            cooling.sort(key=_first)  # stable: equal cooldowns keep config order
            out += [d for _, d in cooling]
        return out

    def _rank(
        self, deps: list[Deployment], strategy: str, states: dict[str, DeploymentHealth], pick: bool
    ) -> list[Deployment]:
        """`deps` (a list of ours, reordered in place) by `strategy`; `pick`:
        the weighted strategy draws the first at random (else heaviest first)."""
        if strategy == "ordered":
            return deps
        if len(deps) < 2:
            if strategy not in STRATEGIES:
                raise ValueError(f"unknown routing strategy {strategy!r}")
            return deps
        if strategy == "weighted":
            if pick:
                total = 0.0
                for d in deps:
                    total += d.weight
                if total > 0.0:
                    x = self.rng.random() * total
                    chosen = -1
                    for i, d in enumerate(deps):
                        w = d.weight
                        if w > 0.0:
                            chosen = i  # float round-off at the end: the last positive weight
                            if x < w:
                                break
                            x -= w
                    first = deps.pop(chosen)
                    deps.sort(key=_neg_weight)
                    deps.insert(0, first)
                    return deps
            deps.sort(key=_neg_weight)
            return deps
        if strategy == "least_busy":
            health = self.health
            deps.sort(key=lambda d: ((states.get(d.name) or health.get(d.name)).in_flight, -d.weight))
            return deps
        if strategy == "latency":
            health = self.health

            def latency_key(d: Deployment) -> tuple[int, float]:
                s = states.get(d.name) or health.get(d.name)
                if s.samples:
                    return (1, s.ewma_s)
                if s.in_flight:
                    return (2, s.in_flight)  # being measured: after the measured ones
                return (0, 0.0)  # never measured: explore it

            deps.sort(key=latency_key)
            return deps
        if strategy == "cost":
            deps.sort(key=self.price_key)
            return deps
        raise ValueError(f"unknown routing strategy {strategy!r}")
