"""Cost SLOs: a feature's cost per successful outcome, held to a target.

For each `slos:` entry, over the trailing window [now - window, now):
cost = the feature's spend (every attempt of its calls, from the rollups
through `cube.query`), successes = its successful outcomes in the window
(spendgate.analytics.outcomes), cost_per_outcome = cost / successes
(PER_OUTCOME_QUANTUM). `ok` compares exactly, cost <= target x successes, so
rounding never flips a verdict; it is None while the feature has no successful
outcome yet (no ratio to judge). Alerts (`cost_slo` rules) and the dashboard
read `slo_status`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from spendgate.analytics.outcomes import outcomes_by_feature, per_outcome
from spendgate.analytics.showback_schema import CostSlo
from spendgate.ledger.sqlite import EXACT, TABLE, time_window

__all__ = ["CostSlo", "SloStatus", "feature_cost", "slo_status"]


@dataclass(frozen=True, slots=True)
class SloStatus:
    name: str
    feature: str
    window: str
    cost: Decimal
    successes: int
    cost_per_outcome: Decimal | None
    target: Decimal
    ok: bool | None  # None: no successful outcome in the window yet
    failures: int = 0
    since: float = 0.0
    until: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: money as exact decimal strings."""
        cpo = self.cost_per_outcome
        return {"name": self.name, "feature": self.feature, "window": self.window, "cost": format(self.cost, "f"),
                "successes": self.successes, "failures": self.failures,
                "cost_per_outcome": None if cpo is None else format(cpo, "f"), "target": format(self.target, "f"),
                "ok": self.ok, "since": self.since, "until": self.until}  # fmt: skip


def feature_cost(store: Any, feature: str, since: float, until: float) -> Decimal:
    """The feature's exact spend in [since, until): the cube (rollups) when present, else the events."""
    try:
        from spendgate.analytics.cube import query
    except ImportError:  # the rollup cube is not installed in this build: read the events
        query = None
    if query is not None:
        rows = query(store, since=since, until=until, filters={"feature": feature}).rows
        total = Decimal(0)
        for r in rows:
            total = EXACT.add(total, Decimal(r["cost"]))
        return total
    where, window = time_window(since, until)
    (cost,) = store.query(f"SELECT coalesce(dsum(cost), '0') FROM {TABLE}{where} AND feature = ?", [*window, feature])[0]
    return Decimal(cost)


def slo_status(store: Any, slos: Sequence[CostSlo], now: float) -> list[SloStatus]:
    """Each SLO's state at `now`, in config order."""
    out: list[SloStatus] = []
    by_window: dict[float, dict[str | None, Any]] = {}
    for slo in slos:
        since = now - slo.window_seconds
        if slo.window_seconds not in by_window:
            by_window[slo.window_seconds] = outcomes_by_feature(store, since, now)
        totals = by_window[slo.window_seconds].get(slo.feature)
        successes = totals.successes if totals else 0
        cost = feature_cost(store, slo.feature, since, now)
        target = slo.max_cost_per_outcome
        ok = None if successes == 0 else cost <= EXACT.multiply(target, Decimal(successes))
        out.append(SloStatus(slo.name, slo.feature, slo.window, cost, successes, per_outcome(cost, successes), target, ok,
                             failures=totals.failures if totals else 0, since=since, until=now))  # fmt: skip
    return out
