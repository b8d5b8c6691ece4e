"""The write path: a batch of new events folded and added to every rollup,
inside the ledger's append transaction."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import Any

from spendgate.analytics.rollups.build import _key_expr, _metric_columns
from spendgate.analytics.rollups.definitions import (
    _MONDAY,
    BY_NAME,
    DAY,
    DIM_COLUMNS,
    METRICS,
    MONEY_METRICS,
    ROLLUPS,
    SESSIONS_DAY_TABLE,
    SESSIONS_TABLE,
    WEEK,
    Rollup,
    _month_of_day,
    bucket_of,
    q,
)
from spendgate.analytics.rollups.money import _EXACT, NANO_BOUND, ZERO, _add, _dec, split

_MONEY_SLOTS = (5, 6, 7, 8)


def fold(events: Sequence[Any]) -> dict[str, dict[tuple, list]]:
    """Rollup name -> key (bucket, dims...) -> [METRICS values..., remainders].

    Money is folded as integer nanos (slots 5-8); the rare exact remainders
    (amounts with more than 9 decimals) ride in a 13th slot: None, or a list
    of four Decimals. `events` are UsageEvents already known to be new.

    The batch is grouped once by its finest key (the hour and every rollup
    dimension); each rollup then sums those groups, not the events. A batch
    of calls from a few callers is a handful of groups, so the per-event
    work stays one key and one row whatever the number of rollups.
    """
    fine_get = _fine_getter()
    fine: dict[tuple, list[int]] = {}
    vals: list[tuple] = []
    rems: list[tuple | None] = []
    for i, e in enumerate(events):
        key = (bucket_of(e.ts_start, "hour"), *fine_get(e))
        g = fine.get(key)
        if g is None:
            fine[key] = [i]
        else:
            g.append(i)
        cost, cr = split(_dec(e.cost))
        list_cost, lr = split(_dec(e.list_cost))
        saved, sr = split(_dec(e.saved))
        in_cache = bool(e.saved_by) and "cache" in e.saved_by.split(",")
        cache_saved, csr = (saved, sr) if in_cache else (0, None)
        rems.append(None if cr is None and lr is None and sr is None and csr is None else (cr, lr, sr, csr))
        cs = e.cache_status
        vals.append(
            (
                1,
                e.input_tokens or 0,
                e.output_tokens or 0,
                e.cache_read_tokens or 0,
                e.cache_write_tokens or 0,
                cost,
                list_cost,
                saved,
                cache_saved,
                1 if e.status == "error" else 0,
                1 if cs in ("exact", "semantic") else 0,
                1 if cs == "miss" and e.attempt == 1 else 0,
            )
        )
    # the fine groups' sums (and exact remainders), each computed once
    sums: list[tuple[tuple, list, list | None]] = []
    for key, idx in fine.items():
        row = list(vals[idx[0]]) if len(idx) == 1 else list(map(sum, zip(*[vals[i] for i in idx])))
        sums.append((key, row, _remainders(rems, idx)))
    buckets: dict[int, dict[str, int]] = {}
    for key, _row, _rem in sums:
        hour = key[0]
        if hour not in buckets:
            day = hour // DAY * DAY
            buckets[hour] = {
                "hour": hour,
                "day": day,
                "week": (day + _MONDAY) // WEEK * WEEK - _MONDAY,
                "month": _month_of_day(day),
            }
    out: dict[str, dict[tuple, list]] = {}
    for r in ROLLUPS:
        pick = _projector(r)
        folded: dict[tuple, list] = {}
        for key, row, rem in sums:
            k = (buckets[key[0]][r.level], *pick(key))
            have = folded.get(k)
            if have is None:
                folded[k] = [*row, None if rem is None else list(rem)]
            else:
                for j in range(len(row)):
                    have[j] += row[j]
                if rem is not None:
                    if have[-1] is None:
                        have[-1] = list(rem)
                    else:
                        have[-1] = [_add(a, b) for a, b in zip(have[-1], rem)]
        out[r.name] = folded
    return out


def _remainders(rems: list[tuple | None], idx: list[int]) -> list | None:
    extra = None
    for i in idx:
        if rems[i] is not None:
            if extra is None:
                extra = [ZERO, ZERO, ZERO, ZERO]
            for j, x in enumerate(rems[i]):
                if x is not None:
                    extra[j] = _add(extra[j], x)
    return extra


@lru_cache(maxsize=None)
def _fine_dims() -> tuple[str, ...]:
    """Every dimension some rollup keeps, in a fixed order."""
    return tuple(dict.fromkeys(d for r in ROLLUPS for d in r.dims))


@lru_cache(maxsize=None)
def _fine_getter() -> Any:
    get = operator.attrgetter(*[DIM_COLUMNS[d] for d in _fine_dims()])
    return get if len(_fine_dims()) > 1 else (lambda e: (get(e),))


@lru_cache(maxsize=None)
def _projector(r: Rollup) -> Any:
    """A fine key (hour, every dim...) -> this rollup's dims, in its order."""
    pos = [1 + _fine_dims().index(d) for d in r.dims]
    if not pos:
        return lambda key: ()
    get = operator.itemgetter(*pos)
    return get if len(pos) > 1 else (lambda key: (get(key),))


@lru_cache(maxsize=None)
def upsert_sql(name: str) -> str:
    r = BY_NAME[name]
    cols = ["bucket", *(q(d) for d in r.dims), *_metric_columns()]
    sets = []
    for m in METRICS:
        if m in MONEY_METRICS:
            n, rem, s_ = f"{m}_n", f"{m}_rem", f"{m}_n + excluded.{m}_n"
            both = f"CASE WHEN excluded.{rem} IS NULL THEN {rem} ELSE radd({rem}, excluded.{rem}) END"
            # SET expressions all see the old row, so n and rem move together
            sets.append(f"{n} = CASE WHEN abs({s_}) <= {NANO_BOUND} THEN {s_} ELSE 0 END")
            sets.append(f"{rem} = CASE WHEN abs({s_}) <= {NANO_BOUND} THEN {both} ELSE radd({both}, nano_text({s_})) END")
        else:
            sets.append(f"{m} = {m} + excluded.{m}")
    return (
        f"INSERT INTO {r.table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
        f"ON CONFLICT({_key_expr(r)}) DO UPDATE SET {', '.join(sets)}"
    )


def upsert_rows(folded: dict[str, dict[tuple, list]]) -> Iterable[tuple[str, list[tuple]]]:
    """(SQL, rows) pairs for executemany: the folded batch added to each rollup."""
    for name, groups in folded.items():
        if groups:
            rows = []
            for key, vals in groups.items():
                v: list[Any] = list(vals[:5])
                rems = vals[12]
                for j, i in enumerate(_MONEY_SLOTS):
                    n = vals[i]
                    rem = rems[j] if rems is not None else ZERO
                    if not -NANO_BOUND <= n <= NANO_BOUND:
                        rem, n = _add(rem, _EXACT.scaleb(Decimal(n), -9)), 0
                    v += [n, None if rem == 0 else format(rem, "f")]
                v += vals[9:12]
                rows.append((*key, *v))
            yield upsert_sql(name), rows


def update_sessions(conn: Any, events: Sequence[Any]) -> None:
    """Record sessions first seen in this batch (and move one an earlier event reveals)."""
    first: dict[str, Any] = {}
    for e in events:
        sid = e.session_id
        if sid is not None:
            cur = first.get(sid)
            if cur is None or e.ts_start < cur.ts_start:
                first[sid] = e
    if not first:
        return
    known: dict[str, tuple] = {}
    ids = list(first)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for row in conn.execute(
            f"SELECT session_id, first_ts, feature, team FROM {SESSIONS_TABLE} "
            f"WHERE session_id IN ({', '.join('?' * len(chunk))})",
            chunk,
        ):
            known[row[0]] = row[1:]
    counts: dict[tuple, int] = {}
    new_rows, moved = [], []
    for sid, e in first.items():
        old = known.get(sid)
        if old is not None:
            if e.ts_start >= old[0]:
                continue
            k = (bucket_of(old[0], "day"), old[1], old[2])
            counts[k] = counts.get(k, 0) - 1
            moved.append((e.ts_start, e.feature, e.team, sid))
        else:
            new_rows.append((sid, e.ts_start, e.feature, e.team))
        k = (bucket_of(e.ts_start, "day"), e.feature, e.team)
        counts[k] = counts.get(k, 0) + 1
    if new_rows:
        conn.executemany(f"INSERT INTO {SESSIONS_TABLE} (session_id, first_ts, feature, team) VALUES (?, ?, ?, ?)", new_rows)
    if moved:
        conn.executemany(f"UPDATE {SESSIONS_TABLE} SET first_ts = ?, feature = ?, team = ? WHERE session_id = ?", moved)
    conn.executemany(
        f"INSERT INTO {SESSIONS_DAY_TABLE} (bucket, feature, team, sessions) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(bucket, ifnull(feature, char(0)), ifnull(team, char(0))) "
        "DO UPDATE SET sessions = sessions + excluded.sessions",
        [(*k, n) for k, n in counts.items() if n],
    )


def apply(conn: Any, events: Sequence[Any]) -> None:
    """Add new events to every rollup (inside the caller's write transaction)."""
    for sql, rows in upsert_rows(fold(events)):
        conn.executemany(sql, rows)
    update_sessions(conn, events)
