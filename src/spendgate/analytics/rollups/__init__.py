"""Rollups: per-bucket totals kept next to the events, so queries cost O(buckets).

Each rollup is a table `rollup_<name>`: one row per time bucket (hour, day or
month, UTC) and combination of a few dimensions, holding the same metrics a
report sums from `usage_events` (requests, tokens, money, errors, cache hits
and misses, money saved by the response cache).

Money is stored as an exact scaled integer plus a rare remainder: `cost_n`
is the amount in nano-units (1e-9, truncated toward zero) and `cost_rem` the
exact decimal text of what is left (NULL when nothing is, i.e. for any amount
with at most 9 decimals). Sums are then `sum(cost_n)` at C speed plus `dsum`
over the few non-NULL remainders, instead of a Python callback per row.
`|cost_n|` is kept <= NANO_BOUND (4e18 nano = $4e9 per row): an upsert adds
two such values without overflowing int64, and a row that would pass the
bound moves its whole integer part into the remainder. A query summing many
rows can still pass int64: SQLite raises "integer overflow" and the reader
falls back to the exact `dsum` of the same columns (`metrics_sql(exact=True)`).

They are written in the same transaction as the events (`SQLiteLedger.append`
calls `apply`: `fold` then the upserts), and only events whose `event_id` is new
count, so a rollup's totals always equal `dsum` over the events it covers,
digit for digit. A ledger created before rollups existed gets them built from
its events when it is opened (`build`); `rebuild_rollups(store)` does it on
demand.

Modules: `definitions` (dimensions, metrics, the rollups, buckets), `money`
(the nano representation and its SQL), `build` (tables, build, rebuild,
version and high-water checks), `fold` (the write path). None of them may
import `spendgate.ledger.sqlite` (which imports this package).
"""

from spendgate.analytics.rollups.build import (
    build,
    drop_sql,
    installed,
    mark,
    rebuild_rollups,
    schema_sql,
    stale_after,
)
from spendgate.analytics.rollups.definitions import (
    BY_NAME,
    DAY,
    DIM_COLUMNS,
    DIMENSIONS,
    HOUR,
    INT_METRICS,
    LEVELS,
    METRICS,
    MONEY_METRICS,
    N_METRIC_COLUMNS,
    NESTS,
    ROLLUP_VERSION,
    ROLLUPS,
    SESSIONS_DAY_TABLE,
    SESSIONS_TABLE,
    WEEK,
    Rollup,
    bucket_of,
    bucket_sql,
    ceil_bucket,
    next_bucket,
    q,
)
from spendgate.analytics.rollups.fold import apply, fold, update_sessions, upsert_rows, upsert_sql
from spendgate.analytics.rollups.money import (
    _EXACT,
    NANO,
    NANO_BOUND,
    ZERO,
    _add,
    dadd,
    decode_metrics,
    metrics_sql,
    money_value,
    nano_n,
    nano_rem,
    nano_text,
    radd,
    register,
    split,
)

