"""The dashboard's panels: each turns a `Query` into a table (`columns`, `rows`)
plus what its chart or headline needs.

Figures come from the rollup cube (`spendgate.analytics.cube.query`), so every
panel costs O(buckets), not O(events); budgets, alerts and SLOs come from their
own owners, and a panel whose source is absent says "not configured" instead of
failing the page. Money leaves here as exact decimal strings.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from spendgate.analytics import cube, forecast
from spendgate.analytics.since import format_time
from spendgate.ledger.sqlite import EXACT

ZERO = Decimal(0)
DAY = 86400
RATIO_QUANTUM = Decimal("0.000001")  # shares and rates: a millionth
MONEY_QUANTUM = Decimal("0.000000000001")  # derived money (averages, per-unit): a trillionth
STACK_DIMS = ("model", "team", "feature", "environment", "user", "tenant")
DRIVER_DIMS = {
    "user": ("user",),
    "prompt": ("prompt_template", "prompt_version"),
    "feature": ("feature",),
    "team": ("team",),
    "tenant": ("tenant",),
    "model": ("model",),
    "key_id": ("key_id",),
}
OTHER = "(other)"


@dataclass(frozen=True, slots=True)
class Query:
    """One dashboard request's window, filters and panel options."""

    since: float
    until: float
    now: float
    filters: dict[str, str | None] = field(default_factory=dict)
    stack_by: str = "model"
    dim: str = "user"


@dataclass(slots=True)
class Sources:
    """What the panels read; any of budgets, alerts, slos may be None (not configured)."""

    store: Any
    top_n: int = 10
    attribution_tags: Sequence[str] = ("team", "feature")
    tiers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    baseline_model: str | None = None
    budget_status: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None
    alert_engine: Callable[[], Any] | None = None  # -> the gateway's AlertEngine (or None), looked up per request
    slos: Sequence[Any] | None = None


Table = dict[str, Any]


def col(key: str, label: str, kind: str = "text") -> dict[str, str]:
    return {"key": key, "label": label, "type": kind}


def money(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def ratio(part: Decimal | int, whole: Decimal | int) -> str | None:
    if not whole:
        return None
    with localcontext() as ctx:
        ctx.prec = 40
        return format((Decimal(part) / Decimal(whole)).quantize(RATIO_QUANTUM, rounding=ROUND_HALF_EVEN), "f")


def per(cost: Decimal, count: int) -> str | None:
    if count <= 0:
        return None
    with localcontext() as ctx:
        ctx.prec = 60
        return format((cost / Decimal(count)).quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN), "f")


def rows_of(store: Any, q: Query, group_by: Sequence[str] = (), bucket: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
    result = cube.query(
        store,
        since=q.since if since is None else since,
        until=q.until,
        group_by=tuple(group_by),
        filters=q.filters or None,
        bucket=bucket,  # type: ignore[arg-type]
    )
    return list(result.rows)


def dsum(values: Iterable[Decimal]) -> Decimal:
    """An exact sum of money: never rounds, however many digits (the ledger's `dsum`)."""
    return functools.reduce(EXACT.add, values, ZERO)


def total(rows: Sequence[Mapping[str, Any]], metric: str) -> Any:
    values = [r[metric] for r in rows]
    if values and isinstance(values[0], Decimal):
        return dsum(values)
    return sum(values)


# ---- panels ------------------------------------------------------------------


def summary(src: Sources, q: Query) -> Table:
    rows = rows_of(src.store, q)
    cost, requests = total(rows, "cost"), total(rows, "requests")
    hits, misses = total(rows, "cache_hits"), total(rows, "cache_misses")
    untagged = untagged_cost(src, q)
    row = {
        "cost": money(Decimal(cost)),
        "requests": requests,
        "cost_per_request": per(Decimal(cost), requests),
        "tokens": total(rows, "input_tokens") + total(rows, "output_tokens"),
        "saved": money(Decimal(total(rows, "saved"))),
        "cache_hit_rate": ratio(hits, hits + misses),
        "untagged_share": ratio(untagged, Decimal(cost)),
        "error_rate": ratio(total(rows, "errors"), requests),
    }
    columns = [
        col("cost", "Spend", "money"),
        col("requests", "Requests", "int"),
        col("cost_per_request", "Cost per request", "money"),
        col("tokens", "Tokens", "int"),
        col("saved", "Saved", "money"),
        col("cache_hit_rate", "Cache hit rate", "ratio"),
        col("untagged_share", "Untagged share", "ratio"),
        col("error_rate", "Error rate", "ratio"),
    ]
    return {"columns": columns, "rows": [row]}


def spend_over_time(src: Sources, q: Query) -> Table:
    """Spend per bucket stacked by `q.stack_by`: the top `top_n` values by spend
    over the window as their own series, everything else as one "(other)" series.

    Costs O(buckets x top_n) whatever the dimension's cardinality (a million
    users): one ungrouped-by-bucket query ranks the values, one bucketed query
    reads only the top ones (an IN filter on `dim`), and "(other)" is the bucket totals
    minus those, so every bucket still adds up to the ledger's exact spend."""
    dim = q.stack_by
    bucket = "hour" if q.until - q.since <= 2 * DAY else "day"
    ranked = top_values(src, q, dim)
    out: dict[tuple[float, Any], list[Any]] = {}  # (bucket, series) -> [cost, requests]
    if not ranked.rest:  # N values or fewer: one bucketed query holds them all
        series_rows = rows_of(src.store, q, (dim,), bucket)
    else:
        series_rows = _rows_for_values(src.store, q, dim, ranked.top, bucket)
    for r in series_rows:
        out[(r["bucket"], r[dim])] = [r["cost"], r["requests"]]
    if ranked.rest:
        shown: dict[float, list[Any]] = {}
        for (b, _), (c, n) in out.items():
            acc = shown.setdefault(b, [ZERO, 0])
            acc[0] = EXACT.add(acc[0], c)
            acc[1] += n
        for r in rows_of(src.store, q, (), bucket):
            c0, n0 = shown.get(r["bucket"], (ZERO, 0))
            cost, n = EXACT.subtract(r["cost"], c0), r["requests"] - n0
            if cost or n:
                out[(r["bucket"], OTHER)] = [cost, n]
    order = {g: i for i, g in enumerate([*ranked.top, OTHER])}
    rows = [
        {"bucket": format_time(b), dim: g, "cost": money(c), "requests": n}
        for (b, g), (c, n) in sorted(out.items(), key=lambda kv: (kv[0][0], order[kv[0][1]]))
    ]
    columns = [col("bucket", "Time (UTC)", "time"), col(dim, dim.replace("_", " ").title()), col("cost", "Spend", "money"), col("requests", "Requests", "int")]
    return {"columns": columns, "rows": rows, "stack_by": dim, "bucket": bucket, "series": [*ranked.top, *([OTHER] if ranked.rest else [])]}


@dataclass(frozen=True, slots=True)
class Ranked:
    """A dimension's values by spend over the window: the top N and whether more exist."""

    top: list[str | None]
    rest: int  # how many values beyond the top N


def top_values(src: Sources, q: Query, dim: str) -> Ranked:
    """The `top_n` values of `dim` by spend (ties by name).

    Ranked from rollups alone (`cube.top_values`: the window widened to whole
    hours or days), so ranking 5,000 users reads no events; every number
    shown for the chosen values, and the "(other)" rest, is then queried
    exactly over the window itself. Only which values make the top N can
    differ from an exact-window ranking, in a near tie at the window's edges."""
    top, rest = cube.top_values(src.store, since=q.since, until=q.until, dim=dim, n=src.top_n, filters=q.filters or None)
    return Ranked(list(top), rest)


def _rows_for_values(store: Any, q: Query, dim: str, values: Sequence[str | None], bucket: str | None) -> list[dict[str, Any]]:
    """Bucketed rows for just these values of `dim`: one IN filter (None in it
    selects the untagged calls too)."""
    filters = {**q.filters, dim: tuple(values)}
    return cube.query(store, since=q.since, until=q.until, group_by=(dim,), filters=filters, bucket=bucket).rows  # type: ignore[arg-type, dict-item]


def _day(ts: float) -> float:
    return ts - ts % DAY


def daily_spend(src: Sources, q: Query) -> Table:
    """Spend per UTC day with its trailing 7-day average (the day and the six
    before it), plus the month-end forecast of `analytics.forecast`, the one the
    forecast alert uses too, so the page and the alert never disagree."""
    first = _day(q.since)
    rows = rows_of(src.store, q, (), "day", since=first - 6 * DAY)
    cost_by_day = {_day(r["bucket"]): r["cost"] for r in rows}
    req_by_day = {_day(r["bucket"]): r["requests"] for r in rows}
    out = []
    day = first
    while day < q.until:
        window = [cost_by_day.get(day - i * DAY, ZERO) for i in range(7)]
        out.append(
            {
                "day": format_time(day)[:10],
                "cost": money(cost_by_day.get(day, ZERO)),
                "requests": req_by_day.get(day, 0),
                "avg_7d": per(dsum(window), 7),
            }
        )
        day += DAY
    columns = [col("day", "Day (UTC)", "time"), col("cost", "Spend", "money"), col("requests", "Requests", "int"), col("avg_7d", "Trailing 7-day average", "money")]
    return {"columns": columns, "rows": out, "forecast": forecast_json(forecast.month_end_forecast(src.store, q.now, q.filters or None))}


def forecast_json(f: forecast.Forecast) -> dict[str, Any]:
    """The forecast as the page shows it: `Forecast.to_json()` plus `spent_to_date`
    (the month to date, the name the page's script reads)."""
    return {**f.to_json(), "spent_to_date": money(f.month_to_date)}


async def budgets(src: Sources, q: Query) -> Table:
    if src.budget_status is None:
        return not_configured("No budgets configured (budgets: in the config).")
    status = await src.budget_status()
    if not status:
        return not_configured("No budgets configured (budgets: in the config).")
    rows = [
        {
            "budget": b["name"],
            "instance": b["instance"],
            "window": b.get("window"),
            "limit": money(Decimal(b["limit"])),
            "burst": money(Decimal(b["burst"])),
            "effective_limit": money(Decimal(b["effective_limit"])),
            "spent": money(Decimal(b["spent"])),
            "reserved": money(Decimal(b.get("reserved", 0))),
            "remaining": money(Decimal(b["remaining"])),
            "utilization": None if b.get("utilization") is None else str(b["utilization"]),
            "resets_at": b.get("resets_at"),
            "bursts": "; ".join(f"{money(Decimal(g['amount']))} until {g['until']}" + (f" ({g['reason']})" if g.get("reason") else "") for g in b.get("bursts", [])),
        }
        for b in status
    ]
    columns = [
        col("budget", "Budget"), col("instance", "Instance"), col("window", "Window"), col("limit", "Limit", "money"),
        col("burst", "Burst", "money"), col("effective_limit", "Effective limit", "money"), col("spent", "Spent", "money"),
        col("reserved", "Reserved", "money"), col("remaining", "Remaining", "money"), col("utilization", "Utilization", "ratio"),
        col("resets_at", "Resets", "time"), col("bursts", "Burst grants"),
    ]
    return {"columns": columns, "rows": rows}


def cache(src: Sources, q: Query) -> Table:
    """Response-cache hit rate and what it saved, per cache status.

    `cache_saved` counts only the response cache (events whose `saved_by` lists
    "cache"); `saved` also holds provider prompt caching and routing savings,
    so the headline quotes `cache_saved`."""
    rows = rows_of(src.store, q, ("cache_status",))
    hits, misses = total(rows, "cache_hits"), total(rows, "cache_misses")
    saved = Decimal(total(rows, "saved"))
    cache_saved = Decimal(total(rows, "cache_saved"))
    out = [
        {"cache_status": r["cache_status"], "requests": r["requests"], "cost": money(r["cost"]), "cache_saved": money(r["cache_saved"]), "saved": money(r["saved"])}
        for r in sorted(rows, key=lambda r: str(r["cache_status"]))
    ]
    rate = ratio(hits, hits + misses)
    headline = f"Hit rate {'–' if rate is None else f'{Decimal(rate) * 100:.1f}%'} ({hits} hits, {misses} misses); the cache saved ${cache_saved:,.2f}"
    columns = [
        col("cache_status", "Cache"), col("requests", "Requests", "int"), col("cost", "Spend", "money"),
        col("cache_saved", "Saved by the cache", "money"), col("saved", "Saved (all)", "money"),
    ]
    return {"columns": columns, "rows": out, "hit_rate": rate, "hits": hits, "misses": misses, "cache_saved": money(cache_saved), "saved": money(saved), "headline": headline}


def tier_mix(src: Sources, q: Query) -> Table:
    if not src.tiers:
        return not_configured("No model tiers configured (routing.tiers).")
    tier_of: dict[str, str] = {}
    for name, models in src.tiers.items():
        for m in models:
            tier_of.setdefault(m, name)
    rows = rows_of(src.store, q, ("model",))
    acc: dict[str, list[Any]] = {}
    for r in rows:
        t = tier_of.get(r["model"] or "", "(no tier)")
        a = acc.setdefault(t, [0, ZERO, []])
        a[0] += r["requests"]
        a[1] = EXACT.add(a[1], r["cost"])
        a[2].append(r["model"] or "(unknown)")
    all_req = sum(a[0] for a in acc.values())
    all_cost = dsum(a[1] for a in acc.values())
    order = [*src.tiers, "(no tier)"]
    out = [
        {"tier": t, "models": ", ".join(sorted(acc[t][2])), "requests": acc[t][0], "request_share": ratio(acc[t][0], all_req), "cost": money(acc[t][1]), "cost_share": ratio(acc[t][1], all_cost)}
        for t in order
        if t in acc
    ]
    top = next((t for t in src.tiers if src.baseline_model in src.tiers[t]), list(src.tiers)[-1])
    cheaper = sum(a[0] for t, a in acc.items() if t != top and t != "(no tier)")
    share = ratio(cheaper, all_req)
    headline = f"{'–' if share is None else f'{Decimal(share) * 100:.1f}%'} of requests on tiers cheaper than {top}"
    columns = [col("tier", "Tier"), col("models", "Models seen"), col("requests", "Requests", "int"), col("request_share", "Share of requests", "ratio"), col("cost", "Spend", "money"), col("cost_share", "Share of spend", "ratio")]
    return {"columns": columns, "rows": out, "cheaper_share": share, "headline": headline}


def untagged_cost(src: Sources, q: Query) -> Decimal:
    """Spend of calls missing any attribution tag."""
    rows = rows_of(src.store, q, tuple(src.attribution_tags))
    return dsum(r["cost"] for r in rows if any(r[t] is None for t in src.attribution_tags))


def untagged(src: Sources, q: Query) -> Table:
    tags = tuple(src.attribution_tags)
    rows = rows_of(src.store, q, tags)
    all_cost = dsum(r["cost"] for r in rows)
    all_req = sum(r["requests"] for r in rows)
    out = []
    for t in tags:
        cost = dsum(r["cost"] for r in rows if r[t] is None)
        n = sum(r["requests"] for r in rows if r[t] is None)
        out.append({"tag": t, "untagged_requests": n, "untagged_cost": money(cost), "cost_share": ratio(cost, all_cost), "request_share": ratio(n, all_req)})
    cost = dsum(r["cost"] for r in rows if any(r[t] is None for t in tags))
    n = sum(r["requests"] for r in rows if any(r[t] is None for t in tags))
    out.append({"tag": "any of " + ", ".join(tags), "untagged_requests": n, "untagged_cost": money(cost), "cost_share": ratio(cost, all_cost), "request_share": ratio(n, all_req)})
    share = ratio(cost, all_cost)
    headline = f"{'–' if share is None else f'{Decimal(share) * 100:.1f}%'} of spend lacks {' or '.join(tags)}"
    columns = [col("tag", "Tag"), col("untagged_requests", "Untagged requests", "int"), col("untagged_cost", "Untagged spend", "money"), col("cost_share", "Share of spend", "ratio"), col("request_share", "Share of requests", "ratio")]
    return {"columns": columns, "rows": out, "untagged_share": share, "headline": headline}


def top_drivers(src: Sources, q: Query) -> Table:
    """The `top_n` biggest spenders by `q.dim`, then one "(other)" row for the
    rest, so the rows add up to the window's spend and the shares to 100%."""
    dims = DRIVER_DIMS[q.dim]
    if len(dims) == 1:  # one dimension (users: thousands of values): rank from rollups, then exact figures
        ranked_values = top_values(src, q, dims[0])
        rows = _rows_for_values(src.store, q, dims[0], ranked_values.top, None) if ranked_values.top else []
        whole = rows_of(src.store, q)
        all_cost = dsum(r["cost"] for r in whole)
        # shown in order of the exact figures (the rollup ranking chose which rows, to within rounding)
        ranked = sorted(rows, key=lambda r: (-r["cost"], r[dims[0]] is not None, str(r[dims[0]])))
        has_rest = ranked_values.rest > 0
    else:  # template x version: few enough to rank exactly
        whole = rows = rows_of(src.store, q, dims)
        all_cost = dsum(r["cost"] for r in rows)
        ranked = sorted(rows, key=lambda r: (-r["cost"], [(r[d] is not None, str(r[d])) for d in dims]))[: src.top_n]
        has_rest = len(rows) > src.top_n

    def row(r: Mapping[str, Any]) -> dict[str, Any]:
        return {"requests": r["requests"], "tokens": r["input_tokens"] + r["output_tokens"], "cost": money(r["cost"]), "share": ratio(r["cost"], all_cost)}

    out = [{**{d: r[d] for d in dims}, **row(r)} for r in ranked]
    if has_rest:  # the window's exact total minus the rows shown
        other = {
            "cost": EXACT.subtract(all_cost, dsum(r["cost"] for r in ranked)),
            **{m: sum(r[m] for r in whole) - sum(r[m] for r in ranked) for m in ("requests", "input_tokens", "output_tokens")},
        }
        out.append({**{d: OTHER for d in dims}, **row(other)})
    columns = [
        *(col(d, d.replace("_", " ").title()) for d in dims), col("requests", "Requests", "int"), col("tokens", "Tokens", "int"),
        col("cost", "Spend", "money"), col("share", "Share of spend", "ratio"),
    ]
    return {"columns": columns, "rows": out, "dim": q.dim}


def unit_economics(src: Sources, q: Query) -> Table:
    """Per feature: cost per request, per session (a session counts in the window
    holding its first event) and per successful outcome (F's outcomes; outcome
    counts are per feature and time, and ignore the other filters)."""
    from spendgate.analytics.outcomes import outcomes_by_feature

    rows = rows_of(src.store, q, ("feature",))
    sessions_of, _source = cube.sessions_by_feature(src.store, q.since, q.until, q.filters or None)
    acc = {r["feature"]: [r["requests"], r["cost"], sessions_of.get(r["feature"], 0)] for r in rows}
    outcomes = outcomes_by_feature(src.store, q.since, q.until)
    out = []
    for feature, (n, cost, sessions) in sorted(acc.items(), key=lambda kv: (-kv[1][1], str(kv[0]))):
        o = outcomes.get(feature)
        successes = o.successes if o else 0
        failures = o.failures if o else 0
        out.append(
            {
                "feature": feature,
                "requests": n,
                "cost": money(cost),
                "cost_per_request": per(cost, n),
                "sessions": sessions,
                "cost_per_session": per(cost, sessions),
                "successes": successes,
                "failures": failures,
                "cost_per_success": per(cost, successes),
            }
        )
    columns = [
        col("feature", "Feature"), col("requests", "Requests", "int"), col("cost", "Spend", "money"),
        col("cost_per_request", "Per request", "money"), col("sessions", "Sessions", "int"),
        col("cost_per_session", "Per session", "money"), col("successes", "Successful outcomes", "int"),
        col("failures", "Failed outcomes", "int"), col("cost_per_success", "Per successful outcome", "money"),
    ]
    return {"columns": columns, "rows": out}


def slos(src: Sources, q: Query) -> Table:
    if not src.slos:
        return not_configured("No cost SLOs configured (slos: in the config).")
    try:
        from spendgate.analytics.slo import slo_status
    except ImportError:
        return not_configured("Cost SLOs are not available in this build.")
    out = [
        {
            "name": s.name,
            "feature": s.feature,
            "window": s.window,
            "cost": money(s.cost),
            "successes": s.successes,
            "cost_per_outcome": money(s.cost_per_outcome),
            "target": money(s.target),
            "ok": s.ok,
        }
        for s in slo_status(src.store, src.slos, q.now)
    ]
    columns = [
        col("name", "SLO"), col("feature", "Feature"), col("window", "Window"), col("cost", "Spend", "money"),
        col("successes", "Successes", "int"), col("cost_per_outcome", "Cost per outcome", "money"),
        col("target", "Target", "money"), col("ok", "Met", "bool"),
    ]
    return {"columns": columns, "rows": out}


async def alerts(src: Sources, q: Query) -> Table:
    engine = src.alert_engine() if src.alert_engine is not None else None
    if engine is None:
        return not_configured("No alerts configured (alerts: in the config).")
    history = await asyncio.to_thread(engine.history, 200)  # a SQLite read
    rows = [{k: format_time(v) if k == "ts" and isinstance(v, (int, float)) else _plain(v) for k, v in dict(h).items()} for h in history]
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    columns = [col(k, k.replace("_", " ").capitalize(), "time" if k in ("ts", "at", "fired_at", "time") else "text") for k in keys]
    return {"columns": columns, "rows": rows}


def dimensions(src: Sources, q: Query, dims: Sequence[str]) -> dict[str, Any]:
    """Values seen for each filter dimension in the window (by spend, at most 200)."""
    unfiltered = Query(since=q.since, until=q.until, now=q.now)
    values = {}
    for d in dims:
        rows = sorted(rows_of(src.store, unfiltered, (d,)), key=lambda r: (-r["cost"], str(r[d])))
        values[d] = [r[d] for r in rows[:200]]
    return {"values": values}


def not_configured(message: str) -> Table:
    return {"status": "not_configured", "message": message, "columns": [], "rows": []}


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (dict, list)):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return value
