"""The dashboard's read-only JSON and CSV API: `/dashboard/api/<view>[.csv]`.

Query parameters: `range` (24h | 7d | 30d | 90d | mtd) or `since`/`until`
(any form `spendgate report --since` takes); a filter per dimension
(`team=search&feature=chat`; the value `(untagged)` selects calls without the
tag); `stack_by` for spend_over_time; `dim` for top_drivers. Every view
answers a table (`columns`, `rows`), so every view downloads as CSV too, with
money as the exact decimal text the JSON carries.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from spendgate.analytics.cube import DIMENSIONS, is_free_tag
from spendgate.analytics.since import format_time, parse_time
from spendgate.analytics.spreadsheet import safe_text
from spendgate.dashboard import panels
from spendgate.dashboard.panels import Query, Sources
from spendgate.dashboard.schema import RANGES, TAG_DIMS, DashboardConfig

UNTAGGED = "(untagged)"
RANGE_SECONDS = {"24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "90d": 90 * 86400}
FILTER_DIMS = ("team", "feature", "environment", "user", "tenant")
# the window a query may ask for: dates a calendar can bucket, and at most ~3 years, so a
# per-day view stays a few thousand rows (an open-ended `until` would build millions)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
LATEST = datetime(2200, 1, 1, tzinfo=UTC).timestamp()
MAX_WINDOW_S = 1100 * 86400
PanelFn = Callable[[Sources, Query], Any]

# view -> panel; sync panels run in a thread (SQLite reads must not stall the event loop)
VIEWS: dict[str, PanelFn] = {
    "summary": panels.summary,
    "spend_over_time": panels.spend_over_time,
    "daily_spend": panels.daily_spend,
    "budgets": panels.budgets,
    "cache": panels.cache,
    "tier_mix": panels.tier_mix,
    "untagged": panels.untagged,
    "top_drivers": panels.top_drivers,
    "unit_economics": panels.unit_economics,
    "slos": panels.slos,
    "alerts": panels.alerts,
}


class BadQuery(ValueError):
    """A query parameter the API cannot read (answered 400)."""


def parse_query(params: Mapping[str, str], config: DashboardConfig, now: float) -> Query:
    """Window, filters and options from query parameters; BadQuery says what is wrong."""
    known = {"range", "since", "until", "stack_by", "dim"}
    filters: dict[str, str | None] = {}
    for name, value in params.items():
        if name in known:
            continue
        if name not in DIMENSIONS and not is_free_tag(name):
            raise BadQuery(
                f"unknown parameter {name!r}: filter by one of {', '.join(DIMENSIONS)}, or tag:NAME for a free-form "
                "tag (NAME: 1-64 letters, digits, '_', '.', '-')"
            )
        if value == "":
            raise BadQuery(f"{name}= needs a value; {name}={UNTAGGED} selects calls without it")
        filters[name] = None if value == UNTAGGED else value
    since, until = _window(params, config.default_range, now)
    stack_by = params.get("stack_by", "model")
    if stack_by not in panels.STACK_DIMS:
        raise BadQuery(f"stack_by must be one of {', '.join(panels.STACK_DIMS)}")
    dim = params.get("dim", "user")
    if dim not in panels.DRIVER_DIMS:
        raise BadQuery(f"dim must be one of {', '.join(panels.DRIVER_DIMS)}")
    return Query(since=since, until=until, now=now, filters=filters, stack_by=stack_by, dim=dim)


def _window(params: Mapping[str, str], default: str, now: float) -> tuple[float, float]:
    try:
        until = parse_time(params["until"], now) if params.get("until") else now
        if params.get("since"):
            since = parse_time(params["since"], now)
        else:
            rng = params.get("range") or default
            if rng not in RANGES:
                raise BadQuery(f"range must be one of {', '.join(RANGES)}")
            if rng == "mtd":
                d = datetime.fromtimestamp(until, UTC)
                since = datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()
            else:
                since = until - RANGE_SECONDS[rng]
    except BadQuery:
        raise
    except ValueError as exc:
        raise BadQuery(str(exc)) from None
    if not (EARLIEST <= since and until <= LATEST):
        raise BadQuery(f"since and until must lie between {format_time(EARLIEST)} and {format_time(LATEST)}")
    if since >= until:
        if not params.get("until") and since >= now:
            raise BadQuery("since is in the future (until defaults to now)")
        raise BadQuery("since must be before until")
    if until - since > MAX_WINDOW_S:
        raise BadQuery(f"a window spans at most {MAX_WINDOW_S // 86400} days; narrow since/until")
    return since, until


class DashboardApi:
    """Answers one view for one query (JSON-ready dict)."""

    def __init__(self, config: DashboardConfig, sources: Sources, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.sources = sources
        self.clock = clock

    async def view(self, name: str, params: Mapping[str, str], who: str) -> dict[str, Any]:
        """The view's payload; KeyError for an unknown view, BadQuery for bad parameters."""
        now = self.clock()
        if name == "meta":
            return self.meta(who)
        q = parse_query(params, self.config, now)
        if name == "dimensions":
            dims = await asyncio.to_thread(panels.dimensions, self.sources, q, FILTER_DIMS)
            return {"view": name, **self._window(q), **dims}
        fn = VIEWS[name]
        if asyncio.iscoroutinefunction(fn):
            result = await fn(self.sources, q)
        else:
            result = await asyncio.to_thread(fn, self.sources, q)
        return {"view": name, **self._window(q), **result}

    def meta(self, who: str) -> dict[str, Any]:
        return {
            "view": "meta",
            "title": self.config.title,
            "who": who,
            "default_range": self.config.default_range,
            "ranges": list(RANGES),
            "views": [*VIEWS, "dimensions"],
            "filter_dims": list(FILTER_DIMS),
            "tag_dims": list(TAG_DIMS),
            "dimensions": list(DIMENSIONS),
            "stack_by": list(panels.STACK_DIMS),
            "drivers": list(panels.DRIVER_DIMS),
        }

    @staticmethod
    def _window(q: Query) -> dict[str, Any]:
        return {"since": format_time(q.since), "until": format_time(q.until), "filters": q.filters}


def to_csv(payload: Mapping[str, Any]) -> bytes:
    """The view's table as CSV: a header of column keys, values as the JSON gives them
    (money exact; untagged as empty)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    columns = payload.get("columns", [])
    keys = [c["key"] for c in columns]
    text = {c["key"] for c in columns if c.get("type", "text") == "text"}  # caller-chosen names: no formulas
    w.writerow(keys)
    for row in payload.get("rows", []):
        w.writerow([safe_text(_csv_value(row.get(k))) if k in text else _csv_value(row.get(k)) for k in keys])
    return out.getvalue().encode()


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
