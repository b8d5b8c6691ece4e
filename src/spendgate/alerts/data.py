"""The numbers scheduled rules judge: spend and request counts over windows.

Aggregates come from the analytics cube (`spendgate.analytics.cube.query`,
served from rollups when they cover the range) so evaluating alerts stays
cheap on a big ledger. When the cube is not available the same figures are
read from the raw events with SQL, so the alerts package works on its own.
"""

from __future__ import annotations

import calendar
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from spendgate.ledger.sqlite import TABLE

log = logging.getLogger(__name__)

ZERO = Decimal(0)
DAY = 86400.0

# cube dimension -> ledger column (the fallback's SQL)
_COLUMN = {"model": "model_used"}


@dataclass(frozen=True, slots=True)
class Totals:
    requests: int = 0
    cost: Decimal = ZERO
    errors: int = 0
    cache_hits: int = 0
    cache_misses: int = 0


def _cube() -> Any:
    try:
        from spendgate.analytics import cube
    except ImportError:
        return None
    return cube


def grouped(
    store: Any,
    since: float | None,
    until: float | None,
    group_by: Sequence[str] = (),
    filters: Mapping[str, str | None] | None = None,
    bucket: str | None = None,
) -> list[tuple[dict[str, Any], Totals]]:
    """One (dims, totals) per group (and `bucket` start, as dims["bucket"])."""
    cube = _cube()
    if cube is not None:
        result = cube.query(store, since=since, until=until, group_by=tuple(group_by), filters=dict(filters or {}), bucket=bucket)
        out = []
        for row in result.rows:
            dims = {d: row.get(d) for d in group_by}
            if bucket is not None:
                dims["bucket"] = row["bucket"]
            out.append((dims, _totals(row)))
        return out
    return _grouped_sql(store, since, until, group_by, filters or {}, bucket)


def totals(store: Any, since: float | None, until: float | None, filters: Mapping[str, str | None] | None = None) -> Totals:
    rows = grouped(store, since, until, (), filters)
    return rows[0][1] if rows else Totals()


def _totals(row: Mapping[str, Any]) -> Totals:
    return Totals(
        requests=int(row.get("requests") or 0),
        cost=Decimal(row.get("cost") or 0),
        errors=int(row.get("errors") or 0),
        cache_hits=int(row.get("cache_hits") or 0),
        cache_misses=int(row.get("cache_misses") or 0),
    )


def _grouped_sql(
    store: Any,
    since: float | None,
    until: float | None,
    group_by: Sequence[str],
    filters: Mapping[str, str | None],
    bucket: str | None,
) -> list[tuple[dict[str, Any], Totals]]:
    conds, params = [], []
    if since is not None:
        conds.append("ts_start >= ?")
        params.append(float(since))
    if until is not None:
        conds.append("ts_start < ?")
        params.append(float(until))
    for dim, value in filters.items():
        col = _COLUMN.get(dim, dim)
        if value is None:
            conds.append(f"{col} IS NULL")
        else:
            conds.append(f"{col} = ?")
            params.append(value)
    cols = [_COLUMN.get(d, d) for d in group_by]
    if bucket is not None:
        if bucket != "day":
            raise ValueError("the SQL fallback buckets by day only")
        cols.append("CAST(ts_start / 86400 AS INTEGER) * 86400")
    select = ", ".join([*cols, ""]) if cols else ""
    sql = (
        f"SELECT {select}count(*), coalesce(dsum(cost), '0'), "
        "sum(status = 'error'), sum(cache_status IN ('exact', 'semantic')), sum(cache_status = 'miss') "
        f"FROM {TABLE}" + (" WHERE " + " AND ".join(conds) if conds else "")
        + (" GROUP BY " + ", ".join(cols) if cols else "")
    )
    out = []
    for row in store.query(sql, params):
        n = len(cols)
        dims = dict(zip(group_by, row[: len(group_by)]))
        if bucket is not None:
            dims["bucket"] = float(row[n - 1])
        requests, cost, errors, hits, misses = row[n:]
        if not requests:
            continue
        out.append((dims, Totals(int(requests), Decimal(cost), int(errors or 0), int(hits or 0), int(misses or 0))))
    return out


# --- time ------------------------------------------------------------------


def day_start(now: float) -> float:
    return float(int(now // DAY) * DAY)


def day_name(start: float) -> str:
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d")


def month_span(now: float) -> tuple[float, float]:
    d = datetime.fromtimestamp(now, UTC)
    start = datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()
    days = calendar.monthrange(d.year, d.month)[1]
    return start, start + days * DAY


# --- forecast --------------------------------------------------------------


def month_end_forecast(store: Any, now: float, filters: Mapping[str, str | None] | None = None) -> Decimal:
    """Projected spend for the calendar month (UTC) holding `now`.

    Uses the analytics forecast (`spendgate.analytics.forecast`) when it
    exists; otherwise month-to-date spend plus the month-to-date daily rate
    over the days left.
    """
    try:
        from spendgate.analytics.forecast import month_end_forecast as analytics_forecast
    except ImportError:
        analytics_forecast = None
    if analytics_forecast is not None:
        forecast = analytics_forecast(store, now, dict(filters or {}))
        value = _forecast_amount(forecast)
        if value is not None:
            return value
        log.warning("alerts: unexpected forecast result %r; using the simple projection", type(forecast).__name__)
    start, end = month_span(now)
    spent = totals(store, start, now, filters).cost
    elapsed = max(now - start, 3600.0)  # at least an hour, so the first minutes do not explode
    return spent + spent * Decimal(str(end - now)) / Decimal(str(elapsed))


def _forecast_amount(forecast: Any) -> Decimal | None:
    if isinstance(forecast, Decimal):
        return forecast
    for attr in ("forecast", "month_end", "projected", "total"):
        value = forecast.get(attr) if isinstance(forecast, Mapping) else getattr(forecast, attr, None)
        if value is not None:
            return Decimal(value)
    return None
