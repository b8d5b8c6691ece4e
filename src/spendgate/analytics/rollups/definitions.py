"""What the rollups are: their dimensions, metrics, tables and time buckets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

ROLLUP_VERSION = 4  # bump when the set of rollups or their columns change: they are rebuilt

HOUR = 3600
DAY = 86400
WEEK = 7 * DAY
_MONDAY = 3 * DAY  # weeks start on Monday 00:00 UTC (the epoch was a Thursday)

# dimension -> column of usage_events
DIM_COLUMNS: dict[str, str] = {
    "team": "team",
    "feature": "feature",
    "environment": "environment",
    "user": "user",
    "tenant": "tenant",
    "session_id": "session_id",
    "prompt_template": "prompt_template",
    "prompt_version": "prompt_version",
    "experiment": "experiment",
    "priority": "priority",
    "key_id": "key_id",
    "model": "model_used",
    "provider": "provider",
    "cache_status": "cache_status",
    "status": "status",
    "price_status": "price_status",
    "route_reason": "route_reason",
}
DIMENSIONS: tuple[str, ...] = tuple(DIM_COLUMNS)

INT_METRICS = ("requests", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
MONEY_METRICS = ("cost", "list_cost", "saved", "cache_saved")
COUNT_METRICS = ("errors", "cache_hits", "cache_misses")
METRICS: tuple[str, ...] = (*INT_METRICS, *MONEY_METRICS, *COUNT_METRICS)

N_METRIC_COLUMNS = len(METRICS) + len(MONEY_METRICS)


@dataclass(frozen=True, slots=True)
class Rollup:
    name: str
    level: str  # hour | day | month
    dims: tuple[str, ...]

    @property
    def table(self) -> str:
        return f"rollup_{self.name}"


_TFM = ("team", "feature", "environment", "model", "provider")
_PROMPT = ("prompt_template", "prompt_version")

# Smallest first within a level: the planner takes the first one covering a query.
# Every rollup costs the writer an upsert per (bucket, key) in each batch, so
# the set is small and high-cardinality keys (user) carry few other dims.
# A query filtered on user that no rollup covers reads the events through
# their (user, ts_start) index: one user's events are few.
ROLLUPS: tuple[Rollup, ...] = (
    Rollup("month_all", "month", ("cache_status",)),
    Rollup("month_team", "month", ("team", "cache_status")),
    Rollup("month_tfm", "month", _TFM),
    Rollup("month_user", "month", ("user", "team")),
    # weeks: a ranking over 30-90 days by user reads ~4x fewer rows than days
    # (weeks do not nest in months, so a bucket="month" query never reads them)
    Rollup("week_user", "week", ("user", "team")),
    Rollup("day_all", "day", ("cache_status",)),
    Rollup("day_env", "day", ("environment",)),
    Rollup("day_model", "day", ("model", "provider")),
    Rollup("day_team", "day", ("team", "cache_status")),
    Rollup("day_feature", "day", ("feature", "team")),
    Rollup("day_tenant", "day", ("tenant",)),
    Rollup("day_prompt", "day", (*_PROMPT, "team")),
    Rollup("day_tfm", "day", _TFM),
    Rollup("day_key", "day", ("key_id", "team")),
    Rollup("day_tenant_team", "day", ("tenant", "team")),
    Rollup("day_prompt_feature", "day", (*_PROMPT, "feature", "team")),
    Rollup("day_user", "day", ("user", "team")),
    Rollup("hour_all", "hour", ("cache_status",)),
    Rollup("hour_model", "hour", ("model", "provider")),
    Rollup("hour_team", "hour", ("team", "cache_status")),
    Rollup("hour_tenant", "hour", ("tenant",)),
    Rollup("hour_prompt", "hour", _PROMPT),
    Rollup("hour_key", "hour", ("key_id",)),
    Rollup("hour_team_model", "hour", ("team", "model", "provider")),
    Rollup("hour_tfm", "hour", _TFM),
)
BY_NAME = {r.name: r for r in ROLLUPS}
LEVELS = ("month", "week", "day", "hour")  # coarsest first
# (finer, coarser) pairs whose buckets nest: a finer rollup can be re-bucketed to the coarser
NESTS = frozenset({("hour", "day"), ("hour", "week"), ("hour", "month"), ("day", "week"), ("day", "month")})

SESSIONS_TABLE = "rollup_sessions"  # session_id -> (first_ts, feature, team) of its first event
SESSIONS_DAY_TABLE = "rollup_day_sessions"  # day x feature x team -> sessions first seen that day


# --- buckets --------------------------------------------------------------
# Buckets work on whole seconds (int(ts), ts >= 0), so an hour bucket always
# nests in its day and month, in Python and in SQL alike.


@lru_cache(maxsize=4096)
def _month_of_day(day: int) -> int:
    d = datetime.fromtimestamp(day, UTC)
    return int(datetime(d.year, d.month, 1, tzinfo=UTC).timestamp())


def bucket_of(ts: float, level: str) -> int:
    """The start (unix seconds, UTC) of the hour/day/month holding ts."""
    s = int(ts)
    if level == "hour":
        return s // HOUR * HOUR
    day = s // DAY * DAY
    if level == "day":
        return day
    if level == "month":
        return _month_of_day(day)
    if level == "week":
        return (day + _MONDAY) // WEEK * WEEK - _MONDAY
    raise ValueError(f"unknown bucket {level!r}; choose hour, day or month")


def next_bucket(start: int, level: str) -> int:
    if level == "hour":
        return start + HOUR
    if level == "day":
        return start + DAY
    if level == "week":
        return start + WEEK
    d = datetime.fromtimestamp(start, UTC)
    y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(datetime(y, m, 1, tzinfo=UTC).timestamp())


def ceil_bucket(ts: float, level: str) -> int:
    """The first bucket start >= ts."""
    b = bucket_of(ts, level)
    return b if b >= ts else next_bucket(b, level)


def bucket_sql(column: str, level: str) -> str:
    """SQL for bucket_of(column, level)."""
    if level == "hour":
        return f"(CAST({column} AS INTEGER) / {HOUR} * {HOUR})"
    if level == "day":
        return f"(CAST({column} AS INTEGER) / {DAY} * {DAY})"
    if level == "month":
        return f"CAST(strftime('%s', CAST({column} AS INTEGER), 'unixepoch', 'start of month') AS INTEGER)"
    if level == "week":
        return f"((CAST({column} AS INTEGER) + {_MONDAY}) / {WEEK} * {WEEK} - {_MONDAY})"
    raise ValueError(f"unknown bucket {level!r}; choose hour, day or month")


def q(name: str) -> str:
    return f'"{name}"'
