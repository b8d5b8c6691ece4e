"""One small evaluator per rule kind.

A scheduled evaluator looks at the ledger (through `data`) and returns the
alerts that fire now, one `Observation` per subject (the day, the budget
instance, the SLO ...). A per-event evaluator looks at one ledger event.
Evaluators only judge: de-duplication, cooldown and notification are the
engine's job. Messages carry numbers and names, never prompt text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from spendgate.alerts import data
from spendgate.alerts.schema import FILTER_DIMS, duration_s
from spendgate.ledger.events import UsageEvent

ZERO = Decimal(0)
HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class Observation:
    """A firing alert as a rule sees it: what, how much, against what."""

    subject: str
    value: str  # exact text: money as a plain decimal, shares in percent
    threshold: str
    message: str


@dataclass
class Context:
    """What one scheduled evaluation sees: the same `now` for every rule."""

    store: Any
    now: float
    budgets: list[dict[str, Any]] = field(default_factory=list)  # budget_status() rows
    slo_status: list[Any] = field(default_factory=list)  # spendgate.analytics.slo.SloStatus


def money(d: Decimal) -> str:
    """Exact decimal text (no exponent), as money is written everywhere."""
    text = format(d, "f")
    return "0" if d == 0 else text


def percent(ratio: Decimal) -> str:
    return money((ratio * HUNDRED).quantize(Decimal("0.1")))


def _scope_text(filters: Mapping[str, str | None]) -> str:
    if not filters:
        return ""
    parts = [f"{k}={'(untagged)' if v is None else v}" for k, v in sorted(filters.items())]
    return " for " + ", ".join(parts)


# --- scheduled rules -------------------------------------------------------


def daily_spend(rule: Any, ctx: Context) -> list[Observation]:
    start = data.day_start(ctx.now)
    spent = data.totals(ctx.store, start, ctx.now + 1e-6, rule.filters).cost
    if spent <= rule.above:
        return []
    day = data.day_name(start)
    return [
        Observation(
            day,
            money(spent),
            money(rule.above),
            f"Spend on {day} (UTC){_scope_text(rule.filters)} is ${money(spent)}, above ${money(rule.above)}.",
        )
    ]


def daily_spend_vs_average(rule: Any, ctx: Context) -> list[Observation]:
    start = data.day_start(ctx.now)
    today = data.totals(ctx.store, start, ctx.now + 1e-6, rule.filters).cost
    if today <= rule.min_spend:
        return []
    before = data.totals(ctx.store, start - rule.days * data.DAY, start, rule.filters).cost
    average = before / rule.days
    if average <= 0:
        return []  # no history to compare with
    limit = average * rule.factor
    if today <= limit:
        return []
    day = data.day_name(start)
    avg_text = money(average.quantize(Decimal("0.000001")).normalize())
    return [
        Observation(
            day,
            money(today),
            money(limit.quantize(Decimal("0.000001")).normalize()),
            f"Spend on {day} (UTC){_scope_text(rule.filters)} is ${money(today)}, "
            f"above {money(rule.factor)}x the {rule.days}-day daily average (${avg_text}).",
        )
    ]


def budget_utilization(rule: Any, ctx: Context) -> list[Observation]:
    out = []
    for row in ctx.budgets:
        if rule.budget is not None and row["name"] != rule.budget:
            continue
        limit = Decimal(row["effective_limit"])
        spent = Decimal(str(row.get("settled", row.get("spent", 0)))) + Decimal(str(row.get("reserved", 0)))
        if limit <= 0:
            continue
        used = spent * HUNDRED / limit
        if used < rule.at_percent:
            continue
        subject = f"{row['name']}/{row['instance']}"
        out.append(
            Observation(
                subject,
                money(used.quantize(Decimal("0.1"))),
                money(rule.at_percent),
                f"Budget {row['name']} ({row['instance']}, {row['window']}) is at "
                f"{money(used.quantize(Decimal('0.1')))}% of ${money(limit)}: ${money(spent)} used, "
                f"${money(Decimal(row['remaining']))} left.",
            )
        )
    return out


def forecast_over_budget(rule: Any, ctx: Context) -> list[Observation]:
    month = data.day_name(data.month_span(ctx.now)[0])[:7]
    targets: list[tuple[str, Decimal, dict[str, str | None], str]] = []
    if rule.amount is not None:
        targets.append((month, rule.amount, dict(rule.filters), f"${money(rule.amount)}"))
    else:
        rows = [r for r in ctx.budgets if r["name"] == rule.budget]
        for row in rows:
            if not str(row["window"]).startswith("month"):
                raise ValueError(f"budget {rule.budget!r} has a {row['window']} window; forecasts need a monthly budget")
            limit = Decimal(row["effective_limit"])
            scope = _budget_filters(row)
            targets.append(
                (f"{month} {row['name']}/{row['instance']}", limit, scope, f"budget {row['name']} ({row['instance']}) ${money(limit)}")
            )
    out = []
    for subject, limit, filters, what in targets:
        forecast = data.month_end_forecast(ctx.store, ctx.now, filters).quantize(Decimal("0.01"))
        if forecast <= limit:
            continue
        out.append(
            Observation(
                subject,
                money(forecast),
                money(limit),
                f"Month-end forecast for {month}{_scope_text(filters)} is ${money(forecast)}, above {what}.",
            )
        )
    return out


# budget scope dimension -> ledger/cube dimension
_SCOPE_DIMS = {"key": "key_id"}


def _budget_filters(row: Mapping[str, Any]) -> dict[str, str | None]:
    """A budget instance's scope as cube filters (team=search -> {"team": "search"})."""
    out: dict[str, str | None] = {}
    for dim, value in (row.get("scope") or {}).items():
        name = _SCOPE_DIMS.get(dim, dim)
        if name not in FILTER_DIMS:
            raise ValueError(f"budget {row['name']!r}: cannot forecast spend scoped by {dim!r}")
        out[name] = value
    return out


def untagged_share(rule: Any, ctx: Context) -> list[Observation]:
    since = ctx.now - duration_s(rule.window)
    rows = data.grouped(ctx.store, since, ctx.now + 1e-6, rule.tags, rule.filters)
    total = sum((t.cost for _, t in rows), ZERO)
    if total <= 0 or total <= rule.min_spend:
        return []
    untagged = sum((t.cost for dims, t in rows if any(dims.get(tag) is None for tag in rule.tags)), ZERO)
    share = untagged / total
    if share * HUNDRED <= rule.above_percent:
        return []
    tags = ",".join(rule.tags)
    return [
        Observation(
            f"{tags} last {rule.window}",
            percent(share),
            money(rule.above_percent),
            f"{percent(share)}% of spend in the last {rule.window}{_scope_text(rule.filters)} "
            f"(${money(untagged)} of ${money(total)}) lacks {tags}, above {money(rule.above_percent)}%.",
        )
    ]


def _windows(rule: Any, ctx: Context) -> tuple[data.Totals, data.Totals]:
    recent_start = ctx.now - duration_s(rule.window)
    recent = data.totals(ctx.store, recent_start, ctx.now + 1e-6, rule.filters)
    baseline = data.totals(ctx.store, recent_start - duration_s(rule.baseline), recent_start, rule.filters)
    return recent, baseline


def cache_hit_rate_drop(rule: Any, ctx: Context) -> list[Observation]:
    recent, baseline = _windows(rule, ctx)
    r_n, b_n = recent.cache_hits + recent.cache_misses, baseline.cache_hits + baseline.cache_misses
    if r_n < rule.min_requests or b_n < rule.min_requests or baseline.cache_hits == 0:
        return []
    r_rate, b_rate = Decimal(recent.cache_hits) / r_n, Decimal(baseline.cache_hits) / b_n
    if r_rate >= b_rate * rule.factor:
        return []
    return [
        Observation(
            f"last {rule.window}",
            percent(r_rate),
            percent(b_rate * rule.factor),
            f"Cache hit rate over the last {rule.window}{_scope_text(rule.filters)} is {percent(r_rate)}% "
            f"({recent.cache_hits}/{r_n}), below {money(rule.factor)}x the {rule.baseline} baseline of {percent(b_rate)}%.",
        )
    ]


def error_rate_spike(rule: Any, ctx: Context) -> list[Observation]:
    recent, baseline = _windows(rule, ctx)
    if recent.requests < rule.min_requests:
        return []
    r_rate = Decimal(recent.errors) / recent.requests
    b_rate = Decimal(baseline.errors) / baseline.requests if baseline.requests else ZERO
    if r_rate * HUNDRED <= rule.above_percent or r_rate <= b_rate * rule.factor:
        return []
    return [
        Observation(
            f"last {rule.window}",
            percent(r_rate),
            money(rule.above_percent),
            f"Error rate over the last {rule.window}{_scope_text(rule.filters)} is {percent(r_rate)}% "
            f"({recent.errors}/{recent.requests} requests), above {money(rule.above_percent)}% and "
            f"{money(rule.factor)}x the {rule.baseline} baseline of {percent(b_rate)}%.",
        )
    ]


def cost_slo(rule: Any, ctx: Context) -> list[Observation]:
    out = []
    for s in ctx.slo_status:
        if rule.slos and s.name not in rule.slos:
            continue
        if s.ok is not False:
            continue
        cpo = "n/a" if s.cost_per_outcome is None else money(s.cost_per_outcome)
        out.append(
            Observation(
                s.name,
                cpo,
                money(s.target),
                f"Cost SLO {s.name} (feature {s.feature}, {s.window}): ${cpo} per successful outcome "
                f"({s.successes} successes, ${money(s.cost)} spent), above the target ${money(s.target)}.",
            )
        )
    return out


SCHEDULED: dict[str, Callable[[Any, Context], list[Observation]]] = {
    "daily_spend": daily_spend,
    "daily_spend_vs_average": daily_spend_vs_average,
    "budget_utilization": budget_utilization,
    "forecast_over_budget": forecast_over_budget,
    "untagged_share": untagged_share,
    "cache_hit_rate_drop": cache_hit_rate_drop,
    "error_rate_spike": error_rate_spike,
    "cost_slo": cost_slo,
}


# --- per-event rules -------------------------------------------------------


def _dim(event: UsageEvent, dim: str) -> str | None:
    if dim == "model":
        return event.model_used or event.model_requested or None
    return getattr(event, dim, None)


def matches(filters: Mapping[str, str | None], event: UsageEvent) -> bool:
    return all(_dim(event, d) == v for d, v in filters.items())


def single_call(rule: Any, event: UsageEvent) -> Observation | None:
    if event.cost <= rule.above:
        return None
    if rule.group_by == "request":
        subject = event.request_id or event.event_id
    else:
        subject = _dim(event, rule.group_by) or "(untagged)"
    model = _dim(event, "model") or "?"
    return Observation(
        subject,
        money(event.cost),
        money(rule.above),
        f"A call to {model} cost ${money(event.cost)}, above ${money(rule.above)} "
        f"(request {event.request_id}, key {event.key_id or '-'}, team {event.team or '-'}, "
        f"feature {event.feature or '-'}, {event.input_tokens} input / {event.output_tokens} output tokens).",
    )


def unpriced_model(rule: Any, event: UsageEvent) -> Observation | None:
    if event.price_status != "missing":
        return None
    model = _dim(event, "model") or "?"
    return Observation(
        model,
        "missing",
        "priced",
        f"Model {model} (provider {event.provider or '-'}, deployment {event.deployment or '-'}) has no price: "
        "its calls are recorded at $0. Add a `prices:` override or a deployment `price`.",
    )


PER_EVENT: dict[str, Callable[[Any, UsageEvent], Observation | None]] = {
    "single_call": single_call,
    "unpriced_model": unpriced_model,
}


def per_event(rules: Sequence[Any], events: Sequence[UsageEvent]) -> list[tuple[str, Observation]]:
    """(rule name, observation) for every per-event rule an event trips."""
    out = []
    for event in events:
        for rule in rules:
            if rule.filters and not matches(rule.filters, event):
                continue
            obs = PER_EVENT[rule.kind](rule, event)
            if obs is not None:
                out.append((rule.name, obs))
    return out
