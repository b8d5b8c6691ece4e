"""One query for every dashboard and report figure: totals per group and bucket.

`query(store, since=, until=, group_by=, filters=, bucket=)` sums the usage
metrics of events with since <= ts_start < until. A planner answers it from
the rollups (`analytics/rollups/`) when one covers every dimension asked for:
the window is cut into whole months (or weeks), days and hours read from the
coarsest rollup that covers the dimensions, and the ragged ends (less than
an hour) are read from the events themselves, all in one SQL statement.
Money is summed as integer nano-units (see analytics/rollups/money.py), exactly. So a 90-day query reads a few hundred
rollup rows plus at most two hours of events, and gives exactly the numbers
the events give. When no rollup covers the dimensions (session_id,
experiment, ...) it sums the events (`source == "events"`). Filters take a
value, None (untagged) or a list of them (IN).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from spendgate.analytics import rollups as R

DIMENSIONS = R.DIMENSIONS
METRICS = R.METRICS
MONEY = R.MONEY_METRICS
BUCKETS = ("hour", "day", "month")
TABLE = "usage_events"
FilterValue = str | None | tuple[str | None, ...] | list[str | None] | frozenset[str | None]


@dataclass(slots=True)
class CubeResult:
    """rows: one dict per group (and bucket): the group_by dims by name (None = untagged),
    "bucket" (unix seconds, UTC) when a bucket was asked for, and the metrics
    (money as Decimal). source: "rollup:<name>[+...]" or "events"."""

    rows: list[dict[str, Any]]
    source: str
    group_by: tuple[str, ...] = ()
    bucket: str | None = None
    parts: list[str] = field(default_factory=list)  # how the window was read (for explain/debug)

    def total(self) -> dict[str, Any]:
        """The metrics summed over all rows."""
        return _sum_rows(self.rows)


def _metric_names(metrics: Sequence[str] | None) -> tuple[str, ...]:
    if metrics is None:
        return METRICS
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric {bad[0]!r}; choose from {', '.join(METRICS)}")
    want = {"requests", *metrics}
    return tuple(m for m in METRICS if m in want)


def _zero() -> list[Any]:
    return [Decimal(0) if m in MONEY else 0 for m in METRICS]


def _sum_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    acc = _zero()
    for row in rows:
        for i, m in enumerate(METRICS):
            if m in row:  # a query for some metrics only
                acc[i] = R._add(acc[i], row[m]) if m in MONEY else acc[i] + row[m]
    return dict(zip(METRICS, acc))


TAG_PREFIX = "tag:"
_TAG_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def is_free_tag(name: str) -> bool:
    """`tag:NAME`: a free-form tag (the events' `tags` object), read from the events only."""
    return name.startswith(TAG_PREFIX) and bool(_TAG_NAME.match(name[len(TAG_PREFIX) :]))


def _event_columns(names: Iterable[str]) -> dict[str, str]:
    """SQL over usage_events for each dimension, free-form tags included (their
    names are checked by `is_free_tag`, so they are safe inside the SQL)."""
    columns = {d: (R.q(c) if c == "user" else c) for d, c in R.DIM_COLUMNS.items()}
    for name in names:
        if is_free_tag(name):
            columns[name] = f"json_extract(tags, '$.\"{name[len(TAG_PREFIX):]}\"')"
    return columns


def _validate(since: float | None, until: float | None, group_by: Sequence[str], filters: Mapping[str, Any], bucket: str | None) -> None:
    for name in (*group_by, *filters):
        if name not in R.DIM_COLUMNS and not is_free_tag(name):
            raise ValueError(f"unknown dimension {name!r}; choose from {', '.join(DIMENSIONS)} or tag:NAME")
    if len(set(group_by)) != len(group_by):
        raise ValueError(f"group_by names a dimension twice: {list(group_by)}")
    if bucket is not None and bucket not in BUCKETS:
        raise ValueError(f"unknown bucket {bucket!r}; choose hour, day or month")
    for name, value in filters.items():
        if isinstance(value, (tuple, list, frozenset, set)):
            bad = [v for v in value if v is not None and not isinstance(v, str)]
            if bad:
                raise ValueError(f"filter {name}: values must be strings or None (untagged), got {bad[0]!r}")
        elif value is not None and not isinstance(value, str):
            raise ValueError(f"filter {name}: give a string, None (untagged) or a list of them, got {value!r}")
    for label, t in (("since", since), ("until", until)):
        if t is not None and (not isinstance(t, (int, float)) or math.isnan(t)):
            raise ValueError(f"{label} must be unix seconds, got {t!r}")


def query(
    store: Any,
    *,
    since: float | None,
    until: float | None,
    group_by: Sequence[str] = (),
    filters: Mapping[str, FilterValue] | None = None,
    bucket: Literal["hour", "day", "month"] | None = None,
    metrics: Sequence[str] | None = None,
) -> CubeResult:
    """Metrics per group_by (and bucket) over since <= ts_start < until; see the module doc.

    A filter value is a string, None (untagged: IS NULL) or a tuple/list/
    frozenset of them (IN; e.g. the top-N users' series in one query).
    `metrics`: compute only these (plus "requests"); each one left out is a
    sum SQLite does not do per row: ~2x faster for a ranking over
    thousands of users. None: all of METRICS."""
    group_by = tuple(group_by)
    filters = dict(filters or {})
    _validate(since, until, group_by, filters, bucket)
    names = _metric_names(metrics)
    if since is not None and until is not None and until <= since:
        return CubeResult([], "events", group_by, bucket)
    parts = plan(store, since, until, group_by, filters, bucket)
    acc = dict(_run_parts(store, parts, group_by, filters, bucket, names))
    keys = (("bucket",) if bucket else ()) + group_by
    rows = [{**dict(zip(keys, key)), **dict(zip(names, vals))} for key, vals in acc.items()]
    rows.sort(key=lambda r: tuple((r[n] is not None, r[n] if r[n] is not None else "") for n in keys))
    rollups_used = sorted({p.rollup.name for p in parts if p.rollup is not None})
    source = "rollup:" + "+".join(rollups_used) if rollups_used else "events"
    return CubeResult(rows, source, group_by, bucket, [p.describe() for p in parts])


# --- planning -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part:
    rollup: R.Rollup | None  # None: the events
    since: float | None
    until: float | None

    def describe(self) -> str:
        return f"{self.rollup.name if self.rollup else 'events'}[{self.since}, {self.until})"


def _rollups_enabled(store: Any) -> bool:
    try:
        return bool(store.query("SELECT 1 FROM rollup_meta WHERE version = ?", (R.ROLLUP_VERSION,)))
    except Exception:  # noqa: BLE001 - a store without rollups (another backend, an old file)
        return False


def plan(
    store: Any, since: float | None, until: float | None, group_by: Sequence[str], filters: Mapping[str, Any], bucket: str | None
) -> list[Part]:
    """Cut [since, until) into parts each read from the coarsest rollup that
    covers the dimensions and whose buckets fit whole in the part; the rest
    from the events."""
    need = set(group_by) | set(filters)
    levels: list[R.Rollup] = []
    if _rollups_enabled(store):
        allowed = {"hour": ("hour",), "day": ("day", "hour"), "month": ("month", "day", "hour"), None: R.LEVELS}[bucket]
        for level in R.LEVELS:
            if level not in allowed:
                continue
            for r in R.ROLLUPS:  # smallest first within a level
                if r.level == level and need <= set(r.dims):
                    levels.append(r)
                    break
        # week rollups exist for wide dims (user): one with other dims than the
        # day rollup chosen (week_user for a team total) costs more than it saves
        day = next((r for r in levels if r.level == "day"), None)
        levels = [r for r in levels if r.level != "week" or (day is not None and set(r.dims) == set(day.dims))]
    return _cut(since, until, levels)


def _cut(since: float | None, until: float | None, levels: list[R.Rollup]) -> list[Part]:
    if not levels:
        return [Part(None, since, until)]
    r, finer = levels[0], levels[1:]
    lo = None if since is None else R.ceil_bucket(max(since, 0), r.level)
    hi = None if until is None else R.bucket_of(max(until, 0), r.level)
    if since is not None and since < 0:
        return [Part(None, since, until)]  # buckets are defined on ts >= 0 only
    if lo is not None and hi is not None and lo >= hi:
        return _cut(since, until, finer)
    parts = [Part(r, lo, hi)]
    if since is not None and lo != since:
        parts = _cut(since, lo, finer) + parts
    if until is not None and hi != until:
        parts += _cut(hi, until, finer)
    return parts


# --- running a part -------------------------------------------------------


def _where(filters: Mapping[str, Any], columns: Mapping[str, str], conds: list[str], params: list[Any]) -> str:
    for name, value in filters.items():
        col = columns[name]
        if value is None:
            conds.append(f"{col} IS NULL")
        elif isinstance(value, str):
            conds.append(f"{col} = ?")
            params.append(value)
        else:
            values = sorted({v for v in value if v is not None})
            alts = [f"{col} IN ({', '.join('?' * len(values))})"] if values else []
            params.extend(values)
            if None in value:
                alts.append(f"{col} IS NULL")
            conds.append("(" + " OR ".join(alts) + ")" if alts else "0")
    return (" WHERE " + " AND ".join(conds)) if conds else ""


def _run_parts(
    store: Any, parts: Sequence[Part], group_by: Sequence[str], filters: Mapping[str, Any], bucket: str | None,
    names: Sequence[str] = METRICS,
) -> list[tuple[tuple, list[Any]]]:
    """(key, METRICS values) per group over all parts, added up in ONE SQL
    statement (UNION ALL, then GROUP BY), so Python decodes each group once.
    Money is summed as integer nanos at C speed, or, when that passes int64
    ("integer overflow"), exactly with dsum."""
    try:
        return _run_sql(store, parts, group_by, filters, bucket, names, exact=False)
    except Exception as exc:  # noqa: BLE001 - sqlite3.OperationalError
        if "integer overflow" not in str(exc):
            raise
        return _run_sql(store, parts, group_by, filters, bucket, names, exact=True)


def _part_sql(
    part: Part, group_by: Sequence[str], filters: Mapping[str, Any], bucket: str | None, exact: bool, names: Sequence[str] = METRICS
) -> tuple[str, list[Any], int]:
    conds: list[str] = []
    params: list[Any] = []
    if part.rollup is None:
        columns = _event_columns((*group_by, *filters))
        ts, metrics, table = "ts_start", R.metrics_sql("events", exact, names), TABLE
        bucket_expr = R.bucket_sql("ts_start", bucket) if bucket else None
    else:
        columns = {d: R.q(d) for d in part.rollup.dims}
        ts, metrics, table = "bucket", R.metrics_sql("rollup", exact, names), part.rollup.table
        bucket_expr = None
        if bucket:
            bucket_expr = "bucket" if bucket == part.rollup.level else R.bucket_sql("bucket", bucket)
    if part.since is not None:
        conds.append(f"{ts} >= ?")
        params.append(part.since)
    if part.until is not None:
        conds.append(f"{ts} < ?")
        params.append(part.until)
    where = _where(filters, columns, conds, params)
    select = ([bucket_expr] if bucket_expr else []) + [columns[d] for d in group_by]
    group = f" GROUP BY {', '.join(str(i + 1) for i in range(len(select)))}" if select else ""
    cols = [f"{c} AS k{i}" for i, c in enumerate(select)] + [f"{m} AS m{i}" for i, m in enumerate(metrics)]
    return f"SELECT {', '.join(cols)} FROM {table}{where}{group}", params, len(select)


def _run_sql(
    store: Any, parts: Sequence[Part], group_by: Sequence[str], filters: Mapping[str, Any], bucket: str | None,
    names: Sequence[str], exact: bool,
) -> list[tuple[tuple, list[Any]]]:
    sqls, params = [], []
    k = 0
    for part in parts:
        sql, p, k = _part_sql(part, group_by, filters, bucket, exact, names)
        sqls.append(sql)
        params += p
    if len(sqls) == 1:
        sql = sqls[0]
    else:
        outer = [f"k{i}" for i in range(k)]
        i = 0
        for m in names:
            if m in MONEY:
                outer += [f"{'dsum' if exact else 'sum'}(m{i})", f"dsum(m{i + 1}) FILTER (WHERE m{i + 1} IS NOT NULL)"]
                i += 2
            else:
                outer.append(f"sum(m{i})")
                i += 1
        group = f" GROUP BY {', '.join(f'k{j}' for j in range(k))}" if k else ""
        sql = f"SELECT {', '.join(outer)} FROM ({' UNION ALL '.join(sqls)}){group}"
    rows = store.query(sql, params)
    if not k and rows and not rows[0][0]:
        return []  # no events: no row (like a grouped query)
    return [(tuple(row[:k]), R.decode_metrics(row[k:], names)) for row in rows]


def events_query(
    store: Any,
    *,
    since: float | None,
    until: float | None,
    group_by: Sequence[str] = (),
    filters: Mapping[str, FilterValue] | None = None,
    bucket: Literal["hour", "day", "month"] | None = None,
) -> CubeResult:
    """`query` answered from the events only (the reference the rollups are tested against)."""
    group_by = tuple(group_by)
    filters = dict(filters or {})
    _validate(since, until, group_by, filters, bucket)
    names = (("bucket",) if bucket else ()) + group_by
    rows = []
    for key, vals in _run_parts(store, [Part(None, since, until)], group_by, filters, bucket):
        rows.append({**dict(zip(names, key)), **dict(zip(METRICS, vals))})
    rows.sort(key=lambda r: tuple((r[n] is not None, r[n] if r[n] is not None else "") for n in names))
    return CubeResult(rows, "events", group_by, bucket)


def sessions_by_feature(
    store: Any, since: float | None, until: float | None, filters: Mapping[str, FilterValue] | None = None
) -> tuple[dict[str | None, int], str]:
    """Sessions per feature, each counted in the window holding its first event.

    Filters on feature/team are answered from the session rollup (whole days
    from the daily counts, the ends from the sessions table); any other filter
    reads the events: sessions whose first event matching the filters falls
    in the window (all events are scanned: slow on a big ledger). A session
    counts under the feature of its first event. Returns (counts, source).
    """
    filters = dict(filters or {})
    _validate(since, until, (), filters, None)
    out: dict[str | None, int] = {}
    if set(filters) <= {"feature", "team"} and _rollups_enabled(store):
        lo = None if since is None else R.ceil_bucket(max(since, 0), "day")
        hi = None if until is None else R.bucket_of(max(until, 0), "day")
        pieces: list[tuple[str, float | None, float | None]] = []
        if lo is not None and hi is not None and lo >= hi:
            pieces.append((R.SESSIONS_TABLE, since, until))
        else:
            if since is not None and lo != since:
                pieces.append((R.SESSIONS_TABLE, since, lo))
            pieces.append((R.SESSIONS_DAY_TABLE, lo, hi))
            if until is not None and hi != until:
                pieces.append((R.SESSIONS_TABLE, hi, until))
        for table, a, b in pieces:
            ts, agg = ("first_ts", "count(*)") if table == R.SESSIONS_TABLE else ("bucket", "sum(sessions)")
            conds, params = [], []
            if a is not None:
                conds.append(f"{ts} >= ?")
                params.append(a)
            if b is not None:
                conds.append(f"{ts} < ?")
                params.append(b)
            where = _where(filters, {"feature": "feature", "team": "team"}, conds, params)
            for feature, n in store.query(f"SELECT feature, {agg} FROM {table}{where} GROUP BY 1", params):
                out[feature] = out.get(feature, 0) + int(n)
        return {k: v for k, v in out.items() if v}, "rollup:sessions"
    params: list[Any] = []
    columns = _event_columns(filters or {})
    where = _where(filters, columns, ["session_id IS NOT NULL"], params)
    window = []
    if since is not None:
        window.append("t >= ?")
        params.append(since)
    if until is not None:
        window.append("t < ?")
        params.append(until)
    sql = (
        f"SELECT feature, count(*) FROM (SELECT session_id, feature, min(ts_start) AS t FROM {TABLE}{where} "
        f"GROUP BY session_id){' WHERE ' + ' AND '.join(window) if window else ''} GROUP BY 1"
    )
    for feature, n in store.query(sql, params):
        out[feature] = int(n)
    return out, "events"


def top_values(
    store: Any,
    *,
    since: float | None,
    until: float | None,
    dim: str,
    n: int,
    filters: Mapping[str, FilterValue] | None = None,
) -> tuple[list[str | None], int]:
    """The `n` values of `dim` with the most cost over the window, and how many
    other values there are: what a "top N + other" chart or table ranks by.

    The ranking reads rollups only: the window is widened to whole buckets of
    the finest rollup covering `dim` and the filters (hours for most dims,
    days for user), so ranking 5,000 users never scans the ragged ends' events.
    The ranking can therefore differ from one over the exact window in a near
    tie at the edges; the numbers shown for the chosen values should come
    from `query(..., filters={dim: tuple(values)})`, which is exact.
    Ties break by value (untagged last)."""
    filters = dict(filters or {})
    _validate(since, until, (dim,), filters, None)
    need = {dim, *filters}
    level = None
    if _rollups_enabled(store):
        for lv in ("hour", "day"):
            if any(r.level == lv and need <= set(r.dims) for r in R.ROLLUPS):
                level = lv
                break
    if level is not None:
        since = None if since is None else R.bucket_of(max(since, 0), level)
        until = None if until is None else R.ceil_bucket(max(until, 0), level)
    rows = query(store, since=since, until=until, group_by=(dim,), filters=filters, metrics=("cost",)).rows
    ranked = sorted(rows, key=lambda r: (-r["cost"], r[dim] is None, str(r[dim])))
    return [r[dim] for r in ranked[:n]], max(0, len(ranked) - n)
