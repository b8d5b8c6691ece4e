"""Settled budget spend, rebuilt from the ledger at start-up.

The ledger is the source of truth for what calls cost, so counters are not
saved: at start-up each budget's current window is summed from
`usage_events` with the exact `dsum(cost)` aggregate, grouped by the
budget's scope dimensions (one instance per distinct value of a `*`
dimension) and, for rolling windows, by sub-bucket. Budgets sharing a window
and dimensions (e.g. every managed key's monthly budget) share one query.

How a ledger row maps to a scope dimension (what `controls/scope.py` reads
from a live call): key → `key_id`; team, feature, environment, user, tenant,
priority → their columns; `service` and other `tag:NAME` → the `tags` JSON
(or the column, for names that have one); deployment → `deployment` (the
attempt's; a failover attempt counts under its own deployment here, under
the first candidate's live); model → the public name the deployment serves
when it serves one name (right for degraded calls), else `model_requested`.

Blocking (SQLite): run it off the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from spendgate.controls.scope import ANY
from spendgate.controls.windows import CalendarClock, RollingClock
from spendgate.ledger.events import TAG_COLUMNS
from spendgate.ledger.store import LedgerStore

if TYPE_CHECKING:
    from spendgate.controls.budgets import CompiledBudget

_COLUMNS = {"key": "key_id", "deployment": "deployment"}
for _name in ("team", "feature", "environment", "user", "tenant", "priority"):
    _COLUMNS[_name] = _name


@dataclass(frozen=True, slots=True)
class Seed:
    budget: "CompiledBudget"
    instance: str
    counter: str
    settled: Decimal
    expires_at: float


def _expr(dim: str) -> tuple[str, list[Any]]:
    """SQL for a scope dimension's value in a ledger row, and its parameters."""
    if dim in _COLUMNS:
        return f'"{_COLUMNS[dim]}"', []
    name = "service" if dim == "service" else dim[4:]  # tag:NAME
    if name in TAG_COLUMNS:
        return f'"{name}"', []
    return "json_extract(tags, ?)", ['$."' + name.replace('"', '\\"') + '"']


def ledger_spend(
    budgets: Sequence["CompiledBudget"], ledger: LedgerStore, now: float, served: Mapping[str, str] | None = None
) -> list[Seed]:
    """The settled spend of every instance of `budgets` in the window holding `now`.

    `served`: deployment name → the one public model name it serves (see the
    module docstring). Instances with no ledger rows get no seed (zero).
    """
    groups: dict[tuple[str, tuple[str, ...]], list["CompiledBudget"]] = {}
    for cb in budgets:
        groups.setdefault((cb.clock.spec, tuple(d for d, _ in cb.dims)), []).append(cb)
    seeds: list[Seed] = []
    for (_, dims), group in groups.items():
        seeds.extend(_group_spend(group, dims, ledger, now, served or {}))
    return seeds


def _group_spend(
    group: list["CompiledBudget"], dims: tuple[str, ...], ledger: LedgerStore, now: float, served: Mapping[str, str]
) -> list[Seed]:
    clock = group[0].clock
    select: list[str] = []
    select_params: list[Any] = []
    # Budgets hold the traffic the gateway forwards; spend metered elsewhere
    # (SDK, ingest) is reported but cannot be reserved, so it is not counted
    # here either — live counters and a rebuild must agree.
    where = ["ts_start >= ?", "ts_start < ?", "source = 'proxy'"]
    if isinstance(clock, RollingClock):
        first = clock.first_bucket(now)
        start, end = float(first * clock.step), float((first + clock.n + 1) * clock.step)
    else:
        start, end = clock.span(now)
    where_params: list[Any] = [start, end]
    model_at: int | None = None
    for dim in dims:
        if dim == "model":
            model_at = len(select)
            select += ['"deployment"', '"model_requested"']
            continue
        expr, params = _expr(dim)
        select.append(expr)
        select_params += params
        where.append(f"{expr} IS NOT NULL")
        where_params += params
    if len(group) == 1:  # one budget: let SQLite filter its fixed values
        for dim, wanted in group[0].dims:
            if wanted != ANY and dim != "model":
                expr, params = _expr(dim)
                where.append(f"{expr} = ?")
                where_params += [*params, wanted]
    rolling = isinstance(clock, RollingClock)
    if rolling:
        assert isinstance(clock, RollingClock)
        select.append(f"CAST(ts_start / {int(clock.step)} AS INTEGER)")
    group_by = ", ".join(str(i + 1) for i in range(len(select)))
    sql = (
        f"SELECT {', '.join(select) + ', ' if select else ''}dsum(cost) FROM usage_events "
        f"WHERE {' AND '.join(where)}{' GROUP BY ' + group_by if group_by else ''}"
    )
    totals: dict[tuple[str, ...], Decimal] = {}
    for row in ledger.query(sql, [*select_params, *where_params]):
        if row[-1] is None:
            continue
        values: list[str] = []
        i = 0
        for dim in dims:
            if dim == "model":
                assert model_at is not None
                deployment, requested = row[i], row[i + 1]
                values.append(served.get(deployment) or requested)
                i += 2
            else:
                values.append(str(row[i]))
                i += 1
        bucket = str(row[i]) if rolling else ""
        key = (*values, bucket)
        totals[key] = totals.get(key, Decimal(0)) + Decimal(row[-1])
    seeds = []
    for key, amount in totals.items():
        values, bucket = list(key[:-1]), key[-1]
        for cb in group:
            if not all(wanted == ANY or v == wanted for (_, wanted), v in zip(cb.dims, values)):
                continue
            instance = ",".join(f"{d}={v}" for (d, _), v in zip(cb.dims, values)) or "global"
            if rolling:
                assert isinstance(clock, RollingClock)
                counter = f"{cb.prefix(instance)}|r{bucket}"
                expires = float((int(bucket) + clock.n + 1) * clock.step)
            else:
                assert isinstance(clock, CalendarClock)
                counter = f"{cb.prefix(instance)}|{int(start)}"
                expires = end
            seeds.append(Seed(cb, instance, counter, amount, expires))
    return seeds
