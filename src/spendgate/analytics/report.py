"""Spend per group from the ledger, exact to the last digit.

`build_report(store, since, until, by)` groups the events with
since <= ts_start < until by the dimensions in `by` and sums their usage and
money. Money is summed in SQL with `dsum` (exact decimal text), and the total
is computed by its own query over the same window, so `report.total.cost`
equals both the sum of the rows and the ledger's own sum, digit for digit.
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
)
MONEY = ("cost", "list_cost", "saved")

_METRICS_SQL = (
    "count(*), "
    "coalesce(sum(input_tokens), 0), "
    "coalesce(sum(output_tokens), 0), "
    "coalesce(sum(cache_read_tokens), 0), "
    "coalesce(sum(cache_write_tokens), 0), "
    "coalesce(dsum(cost), '0'), coalesce(dsum(list_cost), '0'), coalesce(dsum(saved), '0'), "
    "coalesce(sum(status = 'error'), 0), "
    "coalesce(sum(cache_status IN ('exact', 'semantic')), 0), "
    "coalesce(sum(cache_status = 'miss' AND attempt = 1), 0)"
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

    @property
    def hit_rate(self) -> Decimal | None:
        """Hits / cacheable calls (calls a cache policy covered)."""
        n = self.cache_hits + self.cache_misses
        return None if n == 0 else Decimal(self.cache_hits) / Decimal(n)

    @classmethod
    def from_sql(cls, group: dict[str, Any], values: Sequence[Any]) -> "ReportRow":
        n, inp, out, cr, cw, cost, list_cost, saved, errors, hits, misses = values
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
        )

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

    rows: list[ReportRow] = []
    if dims:
        select = ", ".join(d.sql for d in dims)
        params = [p for d in dims for p in d.params] + window
        group = ", ".join(str(i + 1) for i in range(len(dims)))
        sql = f"SELECT {select}, {_METRICS_SQL} FROM {TABLE}{where} GROUP BY {group}"
        for r in store.query(sql, params):
            rows.append(ReportRow.from_sql(dict(zip(by, r[: len(dims)])), r[len(dims) :]))
    elif total.requests:
        rows.append(ReportRow.from_sql({}, total_row))
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


def _cells(report: Report, row: ReportRow, places: dict[str, int], label: str | None = None) -> list[str]:
    if label is not None:
        groups = [label] + [""] * (len(report.by) - 1) if report.by else [label]
    else:
        groups = [report.label(d, row.group.get(d)) for d in report.by]
    metrics = [
        format_money(getattr(row, m), places[m]) if m in MONEY else _count(getattr(row, m))
        for m in _TABLE_METRICS
    ]
    return groups + metrics


def render_table(report: Report) -> str:
    """Aligned text: one line per group, a TOTAL line, then the warnings.

    Money is printed with every digit it has (never rounded); the missing-price
    list and untagged spend follow the table.
    """
    window = f"{format_time(report.since) or 'the beginning'} .. {format_time(report.until) or 'now'}"
    lines = [f"spend by {', '.join(report.by) or '(everything)'}, {window}", ""]

    headers = (list(report.by) if report.by else ["all"]) + [_HEADERS[m] for m in _TABLE_METRICS]
    places = {m: max(money_decimals(getattr(r, m)) for r in [report.total, *report.rows]) for m in MONEY}
    body = [_cells(report, r, places, None if report.by else "all") for r in report.rows]
    total = _cells(report, report.total, places, "TOTAL")
    widths = [max(len(row[i]) for row in [headers, *body, total]) for i in range(len(headers))]
    ngroups = len(headers) - len(_TABLE_METRICS)

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


def render_csv(report: Report) -> str:
    """One CSV line per group (no total line); money as exact decimal text."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*report.by, *METRICS])
    for r in report.rows:
        writer.writerow(
            [report.label(d, r.group.get(d)) for d in report.by]
            + [_plain(getattr(r, m)) if m in MONEY else getattr(r, m) for m in METRICS]
        )
    return buf.getvalue()


def render_json(report: Report) -> str:
    """The whole report (rows, total, missing prices, untagged) as JSON; money as strings."""
    return json.dumps(report.to_dict(), indent=2) + "\n"
