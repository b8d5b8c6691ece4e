"""Monthly showback / chargeback statements per team or cost center.

`build_statement(store, month, by, showback)` reads one calendar month (UTC)
of the ledger and gives each owner (a team, or a cost center: the call's
`cost_center` tag, else the cost center its team belongs to in
`showback.cost_centers`) a statement: its direct spend by model and feature,
requests, tokens and savings, then its part of each shared cost:

- each `showback.shared_costs` entry (a fixed monthly amount), and
- the month's untagged spend (calls without an owner),

split by the pool's allocation rule (spendgate.analytics.allocation) so the
parts add up to each pool exactly. The totals are exact: the owners' direct
spend plus the untagged spend is the ledger's `dsum(cost)` for the month,
digit for digit, and the grand total is that plus the fixed shared costs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from spendgate.analytics.allocation import allocate
from spendgate.analytics.showback_schema import AllocationRule, ShowbackConfig
from spendgate.ledger.sqlite import EXACT, TABLE, time_window

By = Literal["team", "cost_center"]
BY_CHOICES = ("team", "cost_center")
UNTAGGED_POOL = "untagged spend"
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")

# requests: the attempts sharing a request_id count once (an event without one stands alone)
_METRICS = (
    "count(DISTINCT nullif(request_id, '')) + coalesce(sum(coalesce(request_id, '') = ''), 0), "
    "coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), "
    "coalesce(dsum(cost), '0'), coalesce(dsum(saved), '0')"
)


def _add(a: Decimal, b: Decimal) -> Decimal:
    return EXACT.add(a, b)


def month_window(month: str) -> tuple[float, float]:
    """'2026-11' -> [2026-11-01T00:00Z, 2026-12-01T00:00Z) in unix seconds."""
    m = _MONTH.match(month.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"--month {month!r}: a month such as 2026-11")
    year, mon = int(m.group(1)), int(m.group(2))
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=UTC)
    return start.timestamp(), end.timestamp()


@dataclass(slots=True)
class Usage:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)
    saved: Decimal = field(default_factory=Decimal)

    @classmethod
    def from_sql(cls, values: Any) -> "Usage":
        n, inp, out, cost, saved = values
        return cls(int(n), int(inp), int(out), Decimal(cost), Decimal(saved))


@dataclass(slots=True)
class DirectLine:
    model: str | None
    feature: str | None
    usage: Usage


@dataclass(slots=True)
class SharedLine:
    name: str  # the shared cost's name, or UNTAGGED_POOL
    rule: str
    amount: Decimal  # this owner's part


@dataclass(slots=True)
class OwnerStatement:
    owner: str
    usage: Usage = field(default_factory=Usage)  # direct spend in all
    direct: list[DirectLine] = field(default_factory=list)
    shared: list[SharedLine] = field(default_factory=list)

    @property
    def shared_total(self) -> Decimal:
        total = Decimal(0)
        for line in self.shared:
            total = _add(total, line.amount)
        return total

    @property
    def total(self) -> Decimal:
        return _add(self.usage.cost, self.shared_total)


@dataclass(slots=True)
class Pool:
    """A shared amount and how it was split."""

    name: str
    kind: Literal["fixed", "untagged"]
    rule: str
    amount: Decimal
    parts: dict[str, Decimal] = field(default_factory=dict)


@dataclass(slots=True)
class Statement:
    month: str
    by: str
    since: float
    until: float
    owners: list[OwnerStatement]
    pools: list[Pool]
    untagged: Usage  # spend without an owner (allocated through its pool)
    ledger: Usage  # the whole month, straight from the ledger
    unallocated: Decimal = field(default_factory=Decimal)  # pools with nobody to charge
    quantum: Decimal = field(default_factory=lambda: Decimal("0.000001"))

    @property
    def fixed_shared(self) -> Decimal:
        total = Decimal(0)
        for p in self.pools:
            if p.kind == "fixed":
                total = _add(total, p.amount)
        return total

    @property
    def direct_total(self) -> Decimal:
        """Owners' direct spend plus untagged spend: the ledger's month total."""
        total = self.untagged.cost
        for o in self.owners:
            total = _add(total, o.usage.cost)
        return total

    @property
    def grand_total(self) -> Decimal:
        total = self.unallocated
        for o in self.owners:
            total = _add(total, o.total)
        return total


def _owner_sql(by: str, showback: ShowbackConfig) -> tuple[str, list[Any]]:
    if by == "team":
        return "nullif(team, '')", []
    if by != "cost_center":
        raise ValueError(f"--by {by!r}: team or cost_center")
    tag = showback.cost_center_tag
    if '"' in tag:
        raise ValueError(f"showback.cost_center_tag {tag!r}: no quotes")
    sql, params = "nullif(json_extract(tags, ?), '')", [f'$."{tag}"']
    centers = showback.team_centers()
    if centers:
        whens = " ".join("WHEN ? THEN ?" for _ in centers)
        sql = f"coalesce({sql}, CASE team {whens} END)"
        params += [x for pair in centers.items() for x in pair]
    return sql, params


def build_statement(store: Any, month: str, by: str, showback: ShowbackConfig) -> Statement:
    """The month's statement per owner; ValueError for a bad month or `by`."""
    since, until = month_window(month)
    owner_sql, owner_params = _owner_sql(by, showback)
    where, window = time_window(since, until)

    ledger = Usage.from_sql(store.query(f"SELECT {_METRICS} FROM {TABLE}{where}", window)[0])
    owners: dict[str, OwnerStatement] = {}
    untagged = Usage()
    for owner, *values in store.query(
        f"SELECT {owner_sql}, {_METRICS} FROM {TABLE}{where} GROUP BY 1", [*owner_params, *window]
    ):  # noqa: S608 - expressions are built from constants; values are parameters
        if owner is None:
            untagged = Usage.from_sql(values)
        else:
            owners[str(owner)] = OwnerStatement(str(owner), Usage.from_sql(values))
    for owner, model, feature, *values in store.query(
        f"SELECT {owner_sql}, model_used, feature, {_METRICS} FROM {TABLE}{where} GROUP BY 1, 2, 3",
        [*owner_params, *window],
    ):
        if owner is not None:
            owners[str(owner)].direct.append(DirectLine(model or None, feature or None, Usage.from_sql(values)))
    for o in owners.values():  # biggest first; exact sort key (no rounding negation)
        o.direct.sort(key=lambda d: (d.usage.cost.copy_negate(), d.model or "", d.feature or ""))
    if by == "cost_center":
        for center in showback.cost_centers:  # every configured cost center gets its statement
            owners.setdefault(center, OwnerStatement(center))

    default_rule = showback.allocation
    pools = [Pool(s.name, "fixed", (s.allocation or default_rule).rule, s.amount) for s in showback.shared_costs]
    rules: list[AllocationRule] = [s.allocation or default_rule for s in showback.shared_costs]
    if untagged.cost or untagged.requests:
        untagged_rule = showback.untagged or default_rule
        pools.append(Pool(UNTAGGED_POOL, "untagged", untagged_rule.rule, untagged.cost))
        rules.append(untagged_rule)

    direct = {name: o.usage.cost for name, o in owners.items()}
    unallocated = Decimal(0)
    for pool, rule in zip(pools, rules):
        if not owners and rule.rule != "fixed":
            unallocated = _add(unallocated, pool.amount)  # nobody to charge it to
            continue
        pool.parts = allocate(pool.amount, list(owners), rule, direct, showback.quantum)
        for name, part in pool.parts.items():
            owners.setdefault(name, OwnerStatement(name)).shared.append(SharedLine(pool.name, pool.rule, part))

    statement = Statement(month, by, since, until, sorted(owners.values(), key=lambda o: (o.total.copy_negate(), o.owner)),
                          pools, untagged, ledger, unallocated, showback.quantum)  # fmt: skip
    if statement.direct_total != ledger.cost:  # the groups partition the month: never expected
        raise AssertionError(f"statement direct spend {statement.direct_total} != ledger {ledger.cost}")
    return statement
