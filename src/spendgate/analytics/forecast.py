"""Month-end spend forecast.

Method (deliberately simple, so a reader can redo it by hand):

    forecast = month_to_date + daily_rate x remaining_days

- `month_to_date`: the exact spend from 00:00 UTC on the 1st of `now`'s month
  up to `now`.
- `daily_rate`: the average spend per day over the last 7 *complete* UTC days
  before today (today is partial and would drag the average down). Where the
  ledger has less history than 7 days (a new deployment), the days before its
  first event are left out of the average rather than counted as zero; with no
  complete day at all, the rate is the month-to-date spend per elapsed day.
- `remaining_days`: the fraction of days left from `now` to the end of the
  month (00:00 UTC on the 1st of the next month).

A trailing week tracks recent changes (a new feature launched, a cheaper model
routed) yet covers every weekday once, so weekly cycles do not bias it.
Amounts are exact Decimals; the rate and the forecast are rounded half-even to
a millionth of a dollar (DISPLAY_QUANTUM).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from spendgate.analytics import cube
from spendgate.analytics.rollups import DAY, bucket_of, next_bucket

DISPLAY_QUANTUM = Decimal("0.000001")
WINDOW_DAYS = 7


@dataclass(slots=True)
class Forecast:
    month_start: int
    month_end: int
    now: float
    month_to_date: Decimal
    daily_rate: Decimal
    rate_days: float  # how many days the rate averages
    remaining_days: float
    forecast: Decimal

    def to_json(self) -> dict[str, Any]:
        return {
            "month": datetime.fromtimestamp(self.month_start, UTC).strftime("%Y-%m"),
            "month_start": self.month_start,
            "month_end": self.month_end,
            "now": self.now,
            "month_to_date": format(self.month_to_date, "f"),
            "daily_rate": format(self.daily_rate, "f"),
            "rate_days": self.rate_days,
            "remaining_days": round(self.remaining_days, 6),
            "forecast": format(self.forecast, "f"),
            "method": "month_to_date + average of the last 7 complete UTC days x days remaining",
        }


def _q(x: Decimal) -> Decimal:
    return x.quantize(DISPLAY_QUANTUM, rounding=ROUND_HALF_EVEN)


def _cost(store: Any, since: float, until: float, filters: Mapping[str, str | None] | None) -> Decimal:
    rows = cube.query(store, since=since, until=until, filters=filters).rows
    return rows[0]["cost"] if rows else Decimal(0)


def _first_event_ts(store: Any) -> float | None:
    row = store.query("SELECT min(ts_start) FROM usage_events")
    return row[0][0] if row and row[0][0] is not None else None


def month_end_forecast(store: Any, now: float, filters: Mapping[str, str | None] | None = None) -> Forecast:
    """Spend expected by the end of `now`'s UTC month; see the module doc for the method."""
    month_start = bucket_of(now, "month")
    month_end = next_bucket(month_start, "month")
    mtd = _cost(store, month_start, now, filters)
    today = bucket_of(now, "day")
    start = today - WINDOW_DAYS * DAY
    first = _first_event_ts(store)
    if first is not None:
        # the first day of history counts only if it is complete
        first_full = bucket_of(first, "day") + (DAY if bucket_of(first, "day") < first else 0)
        start = min(today, max(start, first_full))
    days = max(0, (today - start) // DAY)
    with localcontext() as ctx:
        ctx.prec = 60
        if days:
            rate = _cost(store, start, today, filters) / days
        else:
            elapsed = max((now - month_start) / DAY, 1e-9)
            rate = mtd / Decimal(repr(elapsed)) if mtd else Decimal(0)
            days = 0
        remaining = max(0.0, (month_end - now) / DAY)
        forecast = mtd + rate * Decimal(repr(remaining))
    return Forecast(month_start, month_end, now, mtd, _q(rate), float(days), remaining, _q(forecast))
