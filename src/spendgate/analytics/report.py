"""Spend per group from the ledger, exact to the last digit.

`build_report(store, since, until, by)` groups the events with
since <= ts_start < until by the dimensions in `by` and sums their usage and
money. Money is summed in SQL with `dsum` (exact decimal text), and the total
is computed by its own query over the same window, so `report.total.cost`
equals both the sum of the rows and the ledger's own sum, digit for digit.

Routing figures are per *request* (the attempts sharing a `request_id`; an
event without one is its own request), not per event:

- `distinct_requests`: requests with an event in the group;
- `routed_requests`: requests the router resolved through the policy or a
  cascade (an attempt whose route_reason is policy, cascade or
  cascade-escalation);
- `cascade_requests` / `escalated_requests`: requests routed through a cascade
  (an attempt with route_reason cascade or cascade-escalation) / those of them
  with a cascade-escalation attempt (a failed check, or a skipped cheap step);
  `escalation_rate` = escalated / cascade requests (None when none);
- `failover_requests`: requests with a failover attempt; `failover_rate` =
  failover / distinct requests (None when none);
- `routing_saved`: the exact sum of `saved` over the events whose `saved_by`
  lists "routing" (what routing saved against the baseline deployment; a
  cascade step paid for and then escalated counts minus its cost). An event
  saved by the provider's prompt cache too carries both in its one `saved`.

A request counts in every group one of its attempts falls in, with the flags
of the whole request: grouped by model, the cheap model's row shows the share
of its cascade requests that escalated.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from spendgate.analytics.since import format_time
from spendgate.analytics.spreadsheet import safe_text
from spendgate.ledger.events import TAG_COLUMNS
from spendgate.ledger.sqlite import EXACT, TABLE, time_window
from spendgate.ledger.store import LedgerStore

UNTAGGED = "(untagged)"
NONE = "(none)"

# dimension name -> SQL expression over usage_events
COLUMN_DIMENSIONS: dict[str, str] = {
    **{name: f'"{name}"' for name in TAG_COLUMNS},
    "key_id": "key_id",
    "model": "model_used",
    "model_requested": "model_requested",
    "provider": "provider",
    "deployment": "deployment",
    "endpoint": "endpoint",
    "status": "status",
    "source": "source",
    "route_reason": "route_reason",
    "cache_status": "cache_status",
    "cache_scope": "cache_scope",
    "saved_by": "saved_by",
    "price_status": "price_status",
    "wire_format": "wire_format",
    "day": "strftime('%Y-%m-%d', ts_start, 'unixepoch')",
    "month": "strftime('%Y-%m', ts_start, 'unixepoch')",
}
TAG_PREFIX = "tag:"
DIMENSIONS: tuple[str, ...] = (*COLUMN_DIMENSIONS, "tag:NAME")

METRICS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost",
    "list_cost",
    "saved",
    "errors",
    "cache_hits",
    "cache_misses",
    "distinct_requests",
    "routed_requests",
    "cascade_requests",
    "escalated_requests",
    "failover_requests",
    "routing_saved",
)
MONEY = ("cost", "list_cost", "saved", "routing_saved")

_METRICS_SQL = (
    "count(*), "
    "coalesce(sum(input_tokens), 0), "
    "coalesce(sum(output_tokens), 0), "
    "coalesce(sum(cache_read_tokens), 0), "
    "coalesce(sum(cache_write_tokens), 0), "
    "coalesce(dsum(cost), '0'), coalesce(dsum(list_cost), '0'), coalesce(dsum(saved), '0'), "
    "coalesce(sum(status = 'error'), 0), "
    "coalesce(sum(cache_status IN ('exact', 'semantic')), 0), "
    "coalesce(sum(cache_status = 'miss' AND attempt = 1), 0), "
    # requests: the attempts sharing a request_id count once (an event without one stands alone)
    "count(DISTINCT nullif(request_id, '')) + coalesce(sum(coalesce(request_id, '') = ''), 0), "
    # FILTER: dsum's (Python) step runs only for the routed events
    "coalesce(dsum(saved) FILTER (WHERE instr(',' || saved_by || ',', ',routing,')), '0')"
)


def _routing_sql(where: str, select: str | None = None, group: str = "") -> str:
    """Requests routed, through a cascade, escalated, failed over: in all
    (`select` None), or per group of the `select` expressions.

    `r` holds one row per request with a routed, cascaded or failed-over
    attempt in the window (none when routing did nothing); a group's events
    are found from it through the request_id index. Parameters: the window,
    then per group the dimensions' and the window again. (The names in `where`
    and `select` are the events' own: `r`'s columns are named apart.)
    """
    cond = f"{where} AND" if where else " WHERE"
    flags = (
        "WITH r AS (SELECT request_id AS rid, "
        "max(route_reason IN ('policy', 'cascade', 'cascade-escalation')) AS routed, "
        "max(route_reason IN ('cascade', 'cascade-escalation')) AS cascaded, "
        "max(route_reason = 'cascade-escalation') AS escalated, "
        "max(route_reason = 'failover') AS failed_over "
        f"FROM {TABLE}{cond} request_id != '' "
        "AND route_reason IN ('policy', 'cascade', 'cascade-escalation', 'failover') GROUP BY 1) "
    )
    if select is None:
        return flags + (
            "SELECT coalesce(sum(routed), 0), coalesce(sum(cascaded), 0), "
            "coalesce(sum(escalated), 0), coalesce(sum(failed_over), 0) FROM r"
        )
    return flags + (
        f"SELECT {select}, "
        "count(DISTINCT CASE WHEN r.routed THEN r.rid END), "
        "count(DISTINCT CASE WHEN r.cascaded THEN r.rid END), "
        "count(DISTINCT CASE WHEN r.escalated THEN r.rid END), "
        "count(DISTINCT CASE WHEN r.failed_over THEN r.rid END) "
        f"FROM r JOIN {TABLE} ON {TABLE}.request_id = r.rid{where}{group}"
    )


@dataclass(frozen=True, slots=True)
class Dimension:
    name: str  # as the user wrote it: "team", "model", "tag:customer"
    sql: str
    params: tuple[Any, ...] = ()
    is_tag: bool = False  # NULL shows as "(untagged)" and counts as untagged spend

    @property
    def empty_label(self) -> str:
        return UNTAGGED if self.is_tag else NONE


def dimension(name: str) -> Dimension:
    """The SQL for one group-by dimension; ValueError for an unknown one."""
    name = name.strip()
    if name.startswith(TAG_PREFIX):
        tag = name[len(TAG_PREFIX) :]
        if not tag or '"' in tag or any(ord(c) < 32 for c in tag):
            raise ValueError(f"bad tag dimension {name!r}: give tag:NAME (no quotes in NAME)")
        if tag in TAG_COLUMNS:  # dedicated column, see UsageEvent.apply_tags
            return Dimension(name, COLUMN_DIMENSIONS[tag], is_tag=True)
        return Dimension(name, "json_extract(tags, ?)", (f'$."{tag}"',), is_tag=True)
    if name in COLUMN_DIMENSIONS:
        return Dimension(name, COLUMN_DIMENSIONS[name], is_tag=name in TAG_COLUMNS)
    raise ValueError(f"unknown group-by dimension {name!r}; choose from {', '.join(DIMENSIONS)}")


def parse_by(text: str | Sequence[str]) -> list[str]:
    """'team, model' or ['team', 'model'] -> ['team', 'model'] (validated, deduplicated)."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for part in parts:
        part = part.strip()
        if part and part not in out:
            dimension(part)
            out.append(part)
    return out


@dataclass(slots=True)
class ReportRow:
    group: dict[str, Any]  # dimension -> value (None where the event has none)
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost: Decimal = Decimal(0)
    list_cost: Decimal = Decimal(0)
    saved: Decimal = Decimal(0)
    errors: int = 0
    cache_hits: int = 0  # answered from the response cache
    cache_misses: int = 0  # cacheable calls that went upstream (first attempts)
    distinct_requests: int = 0  # requests (attempts sharing a request_id count once)
    routed_requests: int = 0  # resolved by the policy or a cascade
    cascade_requests: int = 0  # routed through a cascade
    escalated_requests: int = 0  # of those, escalated past a step
    failover_requests: int = 0  # with a failover attempt
    routing_saved: Decimal = Decimal(0)  # saved by routing against the baseline

    @property
    def hit_rate(self) -> Decimal | None:
        """Hits / cacheable calls (calls a cache policy covered)."""
        n = self.cache_hits + self.cache_misses
        return None if n == 0 else Decimal(self.cache_hits) / Decimal(n)

    @property
    def escalation_rate(self) -> Decimal | None:
        """Escalated / cascade requests; None without cascade requests."""
        n = self.cascade_requests
        return None if n == 0 else Decimal(self.escalated_requests) / Decimal(n)

    @property
    def failover_rate(self) -> Decimal | None:
        """Requests with a failover attempt / requests; None without requests."""
        n = self.distinct_requests
        return None if n == 0 else Decimal(self.failover_requests) / Decimal(n)

    @property
    def shows_routing(self) -> bool:
        """Whether routing did anything here (the table then shows its columns)."""
        return bool(self.routed_requests or self.failover_requests or self.routing_saved)

    @classmethod
    def from_sql(cls, group: dict[str, Any], values: Sequence[Any]) -> "ReportRow":
        n, inp, out, cr, cw, cost, list_cost, saved, errors, hits, misses, distinct, routing_saved = values
        return cls(
            group=group,
            requests=int(n),
            input_tokens=int(inp),
            output_tokens=int(out),
            cache_read_tokens=int(cr),
            cache_write_tokens=int(cw),
            cost=Decimal(cost),
            list_cost=Decimal(list_cost),
            saved=Decimal(saved),
            errors=int(errors),
            cache_hits=int(hits),
            cache_misses=int(misses),
            distinct_requests=int(distinct),
            routing_saved=Decimal(routing_saved),
        )

    def set_routing(self, values: Sequence[Any]) -> None:
        """The per-request routing counts (`_routing_sql`'s columns)."""
        routed, cascaded, escalated, failed_over = values
        self.routed_requests = int(routed)
        self.cascade_requests = int(cascaded)
        self.escalated_requests = int(escalated)
        self.failover_requests = int(failed_over)

    def routing_counts(self) -> tuple[int, int, int, int]:
        return (self.routed_requests, self.cascade_requests, self.escalated_requests, self.failover_requests)

    def metrics(self) -> dict[str, Any]:
        return {m: getattr(self, m) for m in METRICS}


@dataclass(frozen=True, slots=True)
class MissingPrice:
    """Events the catalog could not price (counted at $0 until it can)."""

    provider: str
    model: str
    events: int
    tokens: int  # input + output


@dataclass(frozen=True, slots=True)
class Untagged:
    """Spend whose events carry no value for a tag dimension."""

    dimension: str
    requests: int
    cost: Decimal


@dataclass(slots=True)
class Report:
    by: list[str]
    since: float | None
    until: float | None
    rows: list[ReportRow]
    total: ReportRow
    missing_prices: list[MissingPrice] = field(default_factory=list)
    untagged: list[Untagged] = field(default_factory=list)

    def label(self, dim: str, value: Any) -> str:
        """How a group value is shown: NULL (and '') become (untagged) or (none)."""
        if value is None or value == "":
            return dimension(dim).empty_label
        return str(value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: money as exact decimal strings, missing values as null."""

        def row(r: ReportRow) -> dict[str, Any]:
            out: dict[str, Any] = dict(r.group)
            for name, value in r.metrics().items():
                out[name] = _plain(value) if name in MONEY else value
            rate = r.hit_rate
            out["cache_hit_rate"] = None if rate is None else float(round(rate, 4))
            for name in ("escalation_rate", "failover_rate"):
                rate = getattr(r, name)
                out[name] = None if rate is None else float(round(rate, 4))
            return out

        return {
            "since": format_time(self.since) or None,
            "until": format_time(self.until) or None,
            "by": list(self.by),
            "rows": [row(r) for r in self.rows],
            "total": row(self.total),
            "missing_prices": [
                {"provider": m.provider, "model": m.model, "events": m.events, "tokens": m.tokens}
                for m in self.missing_prices
            ],
            "untagged": [
                {"dimension": u.dimension, "requests": u.requests, "cost": _plain(u.cost)} for u in self.untagged
            ],
        }


def build_report(
    store: LedgerStore,
    since: float | None = None,
    until: float | None = None,
    by: Sequence[str] = ("team", "model"),
) -> Report:
    """Spend per group over since <= ts_start < until (None: unbounded)."""
    by = parse_by(by)
    dims = [dimension(name) for name in by]
    where, window = time_window(since, until)

    total_row = store.query(f"SELECT {_METRICS_SQL} FROM {TABLE}{where}", window)[0]
    total = ReportRow.from_sql({}, total_row)
    total.set_routing(store.query(_routing_sql(where), window)[0])

    rows: list[ReportRow] = []
    if dims:
        select = ", ".join(d.sql for d in dims)
        params = [p for d in dims for p in d.params] + window
        group = ", ".join(str(i + 1) for i in range(len(dims)))
        sql = f"SELECT {select}, {_METRICS_SQL} FROM {TABLE}{where} GROUP BY {group}"
        for r in store.query(sql, params):
            rows.append(ReportRow.from_sql(dict(zip(by, r[: len(dims)])), r[len(dims) :]))
        if total.routed_requests or total.failover_requests:
            by_group = {tuple(r.group.values()): r for r in rows}
            routing = _routing_sql(where, select, f" GROUP BY {group}")
            for r in store.query(routing, window + params):
                row = by_group.get(tuple(r[: len(dims)]))
                if row is not None:  # always found: the same expressions over a subset of the events
                    row.set_routing(r[len(dims) :])
    elif total.requests:
        rows.append(ReportRow.from_sql({}, total_row))
        rows[0].set_routing(total.routing_counts())
    # copy_negate, not unary minus: minus rounds to the context's 28 digits
    rows.sort(key=lambda r: (r.cost.copy_negate(), -r.requests, [_sort_key(v) for v in r.group.values()]))

    missing_where = f"{where} AND price_status = 'missing'" if where else " WHERE price_status = 'missing'"
    missing = [
        MissingPrice(provider or "", model or "", int(n), int(tokens))
        for provider, model, n, tokens in store.query(
            "SELECT provider, model_used, count(*), "
            "coalesce(sum(input_tokens), 0) + coalesce(sum(output_tokens), 0) "
            f"FROM {TABLE}{missing_where} GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2",
            window,
        )
    ]

    untagged: list[Untagged] = []
    tag_dims = [dimension("team")] + [d for d in dims if d.is_tag and d.sql != COLUMN_DIMENSIONS["team"]]
    for d in tag_dims:
        cond = f"{d.sql} IS NULL"
        sql = f"SELECT count(*), coalesce(dsum(cost), '0') FROM {TABLE}{where + ' AND ' if where else ' WHERE '}{cond}"
        n, cost = store.query(sql, [*window, *d.params])[0]
        untagged.append(Untagged(d.name, int(n), Decimal(cost)))

    return Report(
        by=by, since=since, until=until, rows=rows, total=total, missing_prices=missing, untagged=untagged
    )


def _sort_key(value: Any) -> tuple[int, str]:
    return (1, "") if value is None else (0, str(value))


# --- money formatting -----------------------------------------------------


def _plain(value: Decimal) -> str:
    """Exact decimal text, never scientific notation."""
    return format(value, "f")


def money_decimals(value: Decimal) -> int:
    """How many decimals show every digit of the amount (at least two)."""
    exponent = value.normalize(EXACT).as_tuple().exponent if value else 0
    return max(2, -exponent) if isinstance(exponent, int) else 2


def format_money(value: Decimal, decimals: int | None = None, currency: str = "$") -> str:
    """Every digit of the amount, at least two decimals: $1,234.50, $0.000000123456789.

    `decimals` pads with zeros to line a column up; it never rounds (a value
    with more digits keeps them).
    """
    places = max(money_decimals(value), decimals or 0)
    text = format(value.copy_abs().quantize(Decimal(1).scaleb(-places), context=EXACT), ",f")
    return f"{'-' if value < 0 else ''}{currency}{text}"


def _count(n: int) -> str:
    return f"{n:,}"


# --- renderers ------------------------------------------------------------

_HEADERS = {
    "requests": "requests",
    "errors": "errors",
    "input_tokens": "input tok",
    "output_tokens": "output tok",
    "cache_read_tokens": "cache read",
    "cache_write_tokens": "cache write",
    "cost": "cost",
    "list_cost": "list cost",
    "saved": "saved",
    "cache_hits": "cache hits",
    "routed_requests": "routed",
    "escalation_rate": "escalated",
    "failover_rate": "failed over",
    "routing_saved": "routing saved",
}
_TABLE_METRICS = (
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost",
    "list_cost",
    "saved",
    "cache_hits",
)
# shown only when routing did something in the window (the table is unchanged otherwise)
_ROUTING_TABLE_METRICS = ("routed_requests", "escalation_rate", "failover_rate", "routing_saved")
_RATES = ("escalation_rate", "failover_rate")


def _table_metrics(report: Report) -> tuple[str, ...]:
    return _TABLE_METRICS + _ROUTING_TABLE_METRICS if report.total.shows_routing else _TABLE_METRICS


def _rate(value: Decimal | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _cells(
    report: Report, row: ReportRow, places: dict[str, int], label: str | None = None, metrics: Sequence[str] = _TABLE_METRICS
) -> list[str]:
    if label is not None:
        groups = [label] + [""] * (len(report.by) - 1) if report.by else [label]
    else:
        groups = [report.label(d, row.group.get(d)) for d in report.by]
    cells = [
        format_money(getattr(row, m), places[m]) if m in MONEY
        else _rate(getattr(row, m)) if m in _RATES
        else _count(getattr(row, m))
        for m in metrics
    ]  # fmt: skip
    return groups + cells


def render_table(report: Report) -> str:
    """Aligned text: one line per group, a TOTAL line, then the warnings.

    Money is printed with every digit it has (never rounded); the missing-price
    list and untagged spend follow the table.
    """
    window = f"{format_time(report.since) or 'the beginning'} .. {format_time(report.until) or 'now'}"
    lines = [f"spend by {', '.join(report.by) or '(everything)'}, {window}", ""]

    metrics = _table_metrics(report)
    headers = (list(report.by) if report.by else ["all"]) + [_HEADERS[m] for m in metrics]
    places = {m: max(money_decimals(getattr(r, m)) for r in [report.total, *report.rows]) for m in MONEY}
    body = [_cells(report, r, places, None if report.by else "all", metrics) for r in report.rows]
    total = _cells(report, report.total, places, "TOTAL", metrics)
    widths = [max(len(row[i]) for row in [headers, *body, total]) for i in range(len(headers))]
    ngroups = len(headers) - len(metrics)

    def fmt(cells: list[str]) -> str:
        out = [c.ljust(w) if i < ngroups else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    lines.append(fmt(headers))
    lines.append("  ".join("-" * w for w in widths))
    if body:
        lines.extend(fmt(r) for r in body)
    else:
        lines.append("(no events in this window)")
    lines.append("  ".join("=" * w for w in widths))
    lines.append(fmt(total))
    if report.total.shows_routing:
        lines += ["", _routing_summary(report.total)]

    if report.missing_prices:
        events = sum(m.events for m in report.missing_prices)
        lines += [
            "",
            f"!! MISSING PRICES: {_count(events)} events have no price and are counted at $0 in every "
            "total above. Add a `prices:` override or update the catalog. !!",
        ]
        width_p = max(len("provider"), *(len(m.provider or NONE) for m in report.missing_prices))
        width_m = max(len("model"), *(len(m.model or NONE) for m in report.missing_prices))
        lines.append(f"  {'provider'.ljust(width_p)}  {'model'.ljust(width_m)}  {'events':>10}  {'tokens':>14}")
        for m in report.missing_prices:
            lines.append(
                f"  {(m.provider or NONE).ljust(width_p)}  {(m.model or NONE).ljust(width_m)}  "
                f"{_count(m.events):>10}  {_count(m.tokens):>14}"
            )

    if report.untagged and report.total.requests:
        lines += ["", "untagged spend:"]
        for u in report.untagged:
            share = (u.cost / report.total.cost * 100) if report.total.cost else Decimal(0)
            lines.append(
                f"  no {u.dimension.removeprefix(TAG_PREFIX)}: {format_money(u.cost)} "
                f"({_count(u.requests)} requests, {share:.1f}% of spend)"
            )
    return "\n".join(lines) + "\n"


def _routing_summary(t: ReportRow) -> str:
    """The routing figures of the whole window, in words."""
    escalation = (
        f"{_rate(t.escalation_rate)} escalated ({_count(t.escalated_requests)} of {_count(t.cascade_requests)} cascade requests)"
        if t.cascade_requests else "no cascade requests"
    )  # fmt: skip
    return (
        f"routing: {_count(t.routed_requests)} of {_count(t.distinct_requests)} requests routed by policy or cascade; "
        f"{escalation}; {_rate(t.failover_rate)} failed over ({_count(t.failover_requests)} requests); "
        f"saved {format_money(t.routing_saved)} against the baseline"
    )


def render_csv(report: Report) -> str:
    """One CSV line per group (no total line); money as exact decimal text."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*report.by, *METRICS])
    for r in report.rows:
        writer.writerow(
            [safe_text(report.label(d, r.group.get(d))) for d in report.by]  # tag values: no formulas
            + [_plain(getattr(r, m)) if m in MONEY else getattr(r, m) for m in METRICS]
        )
    return buf.getvalue()


def render_json(report: Report) -> str:
    """The whole report (rows, total, missing prices, untagged) as JSON; money as strings."""
    return json.dumps(report.to_dict(), indent=2) + "\n"
