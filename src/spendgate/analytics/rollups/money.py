"""Money in rollups: exact integer nano-units plus a rare exact remainder, and the
SQL that sums them (see the package docstring)."""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from spendgate.analytics.rollups.definitions import METRICS, MONEY_METRICS

NANO = 10**9
NANO_BOUND = 4 * 10**18  # |stored n| <= this: two of them add up inside int64 (9.2e18)


def _fast(x: str) -> str:
    """SQL: x (canonical decimal text) has at most 9 decimals and |x| < 1e6, so
    round(x * 1e9) in double precision is its exact nano count (< 2^50)."""
    return f"((instr({x}, '.') = 0 OR length({x}) - instr({x}, '.') <= 9) AND abs({x}) < 1000000 AND instr({x}, 'E') = 0)"


def _event_money_sql(col: str, cond: str | None, exact: bool, plain: bool = False) -> tuple[str, str]:
    """(nano sum, remainder dsum) SQL for a money column of usage_events.
    plain: every amount is known to pass `_fast` (checked once by `build`)."""
    if plain:
        n_filter = f" FILTER (WHERE {cond})" if cond else ""
        return f"sum(CAST(round({col} * 1e9) AS INTEGER)){n_filter}", "NULL"
    ok = _fast(col)
    n_expr = f"CASE WHEN {ok} THEN CAST(round({col} * 1e9) AS INTEGER) ELSE nano_n({col}) END"
    agg = "dsum" if exact else "sum"
    n_filter = f" FILTER (WHERE {cond})" if cond else ""
    r_cond = f"{cond} AND NOT {ok}" if cond else f"NOT {ok}"
    return f"{agg}({n_expr}){n_filter}", f"dsum(nano_rem({col})) FILTER (WHERE {r_cond})"


def metrics_sql(source: str, exact: bool = False, names: Sequence[str] = METRICS, plain: bool = False) -> list[str]:
    """The metrics as SQL over usage_events (source "events") or a rollup
    table ("rollup"), in METRICS order, each money metric as TWO columns:
    its nano sum (integer; with exact=True `dsum` text, which cannot
    overflow) and its remainder (`dsum` text or NULL). `money_value` joins
    them. `names`: only these metrics (in METRICS order). The rules are
    those of `spendgate report`."""
    out: list[str] = []
    if source == "events":
        sql: dict[str, Any] = {
            "requests": "count(*)",
            "input_tokens": "coalesce(sum(input_tokens), 0)",
            "output_tokens": "coalesce(sum(output_tokens), 0)",
            "cache_read_tokens": "coalesce(sum(cache_read_tokens), 0)",
            "cache_write_tokens": "coalesce(sum(cache_write_tokens), 0)",
            "cost": _event_money_sql("cost", None, exact, plain),
            "list_cost": _event_money_sql("list_cost", None, exact, plain),
            "saved": _event_money_sql("saved", None, exact, plain),
            "cache_saved": _event_money_sql("saved", "instr(',' || saved_by || ',', ',cache,') > 0", exact, plain),
            "errors": "coalesce(sum(status = 'error'), 0)",
            "cache_hits": "coalesce(sum(cache_status IN ('exact', 'semantic')), 0)",
            "cache_misses": "coalesce(sum(cache_status = 'miss' AND attempt = 1), 0)",
        }
        for m in names:
            out += sql[m] if m in MONEY_METRICS else [sql[m]]
        return out
    for m in names:
        if m in MONEY_METRICS:
            out.append(f"{'dsum' if exact else 'sum'}({m}_n)")
            out.append(f"dsum({m}_rem) FILTER (WHERE {m}_rem IS NOT NULL)")
        else:
            out.append(f"coalesce(sum({m}), 0)")
    return out


def money_value(n: Any, rem: Any) -> Decimal:
    """Nano sum (int or decimal text, None = 0) + remainder text -> the exact
    Decimal, without the trailing zeros nano units add (0.000123, not 0.000123000)."""
    if isinstance(n, str):
        n = int(Decimal(n))  # the exact (dsum) form: an integer as text
    if rem is None:
        if not n:
            return ZERO
        if n % NANO == 0:
            return Decimal(n // NANO)
        return _EXACT.scaleb(Decimal(n), -9).normalize(_EXACT)
    v = _add(_EXACT.scaleb(Decimal(n or 0), -9), Decimal(rem))
    if v.as_tuple().exponent < 0:
        v = v.normalize(_EXACT)
        if v.as_tuple().exponent > 0:
            v = v.quantize(Decimal(1))
    return v


def decode_metrics(vals: Sequence[Any], names: Sequence[str] = METRICS) -> list[Any]:
    """A row of `metrics_sql` columns -> the `names` metrics' values (money as Decimal)."""
    out: list[Any] = []
    i = 0
    for m in names:
        if m in MONEY_METRICS:
            out.append(money_value(vals[i], vals[i + 1]))
            i += 2
        else:
            out.append(vals[i])
            i += 1
    return out


# --- the write path -------------------------------------------------------

_EXACT = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[decimal.InvalidOperation, decimal.Inexact]
)
_add = _EXACT.add
ZERO = Decimal(0)


def dadd(a: Any, b: Any) -> str | None:
    """SQLite scalar `dadd(a, b)`: exact decimal a + b as text (NULL + x = x)."""
    if b is None or b == "0":
        return a
    if a is None or a == "0":
        return b
    return format(_add(Decimal(a), Decimal(b)), "f")


def radd(a: Any, b: Any) -> str | None:
    """SQLite scalar `radd(a, b)`: like dadd, but a zero result is NULL (a remainder column)."""
    v = dadd(a, b)
    return None if v is None or Decimal(v) == 0 else v


def split(d: Decimal) -> tuple[int, Decimal | None]:
    """An amount -> (nano count truncated toward zero, exact remainder or None).
    |n| stays <= NANO_BOUND: past it, everything is remainder."""
    x = _EXACT.scaleb(d, 9)
    n = int(x)
    if -NANO_BOUND <= n <= NANO_BOUND:
        if x == n:
            return n, None
        return n, _EXACT.subtract(d, _EXACT.scaleb(Decimal(n), -9))
    return 0, d


def nano_n(x: Any) -> int | None:
    """SQLite scalar: the nano part of decimal text x (see `split`)."""
    return None if x is None else split(_dec(x))[0]


def nano_rem(x: Any) -> str | None:
    """SQLite scalar: the remainder part of decimal text x, NULL when none."""
    if x is None:
        return None
    r = split(_dec(x))[1]
    return None if r is None or r == 0 else format(r, "f")


def nano_text(n: Any) -> str | None:
    """SQLite scalar: a nano count (integer or decimal text) as decimal text of the amount."""
    return None if n is None else format(_EXACT.scaleb(Decimal(n), -9), "f")


def register(conn: Any) -> None:
    """The SQL functions the rollups need, on a sqlite3 connection."""
    conn.create_function("dadd", 2, dadd, deterministic=True)
    conn.create_function("radd", 2, radd, deterministic=True)
    conn.create_function("nano_n", 1, nano_n, deterministic=True)
    conn.create_function("nano_rem", 1, nano_rem, deterministic=True)
    conn.create_function("nano_text", 1, nano_text, deterministic=True)


def _dec(v: Any) -> Decimal:
    if isinstance(v, Decimal):
        return v
    if isinstance(v, float):
        return Decimal(repr(v))
    return Decimal(v if isinstance(v, (int, str)) else str(v))
