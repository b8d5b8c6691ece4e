"""Budget windows: which counters a call charges at time `now`.

Two kinds, both answered as a `Placement` (the bucket a call adds to, the
buckets summed against the limit, and when room comes back):

- Calendar windows (`period: hour|day|week|month` in `timezone`): one bucket
  per window, [start, end) computed in the zone with `zoneinfo`, so a day is
  local midnight to local midnight (23 or 25 hours across a DST change) and a
  week starts on Monday (ISO). The window's spend is exact.
- Rolling windows (`rolling: 24h`): the window is cut into sub-buckets of
  `step` seconds (at most 60 buckets per window, e.g. 24h → 48 of 30 min). A
  call adds to the sub-bucket `now` falls in; the limit is checked against
  that bucket and the `n` before it (n = length / step), i.e. against the
  spend of the last `length` to `length + step` seconds. Checking one bucket
  more than the window holds makes the cap a true cap: no span of `length`
  seconds ever sees more than the limit (with exactly n buckets, spend at the
  end of the oldest bucket and again just after it drops out could fit nearly
  twice the limit into one window). The price is that spend counts for up to
  one `step` longer than the window says.

Counter names are plain strings, stable across restarts (durable
reservations and ledger rebuilds use them): `<prefix>|<window start>` for
calendar windows, `<prefix>|r<bucket index>` for rolling ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from spendgate.controls.schema import Window
from spendgate.state.store import Checked

MAX_SUB_BUCKETS = 30  # per rolling window: fine enough, and each call sums n + 1 buckets
# sub-bucket sizes tried for rolling windows, smallest first
_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a call made at some moment counts, for one budget instance.

    Valid for calls with `valid_from <= now < valid_until` (one calendar
    window, or one rolling sub-bucket), so callers cache it.
    """

    counter: str  # the bucket the call's amount goes to
    check: tuple[str, ...]  # buckets summed against the limit
    window_start: float  # the span the checked buckets cover
    window_end: float
    resets_at: float  # when room comes back (next window; oldest sub-bucket leaving)
    expires_at: float  # when `counter` is no longer checked by anyone and may be dropped
    valid_from: float
    valid_until: float
    reset_iso: str  # `resets_at` in the budget's zone, for messages and headers


def calendar_span(period: str, tz: ZoneInfo, now: float) -> tuple[float, float]:
    """[start, end) of the calendar `period` holding `now`, in zone `tz`, as unix times.

    Days, weeks and months start at local midnight; an hour is the local clock
    hour (always 3600 s; the repeated hour of a DST fall-back is two windows).
    A midnight that does not exist (DST starting at 00:00) maps to the moment
    the clock jumps, which is where that local day begins.
    """
    local = datetime.fromtimestamp(now, tz)
    if period == "hour":
        start = local.replace(minute=0, second=0, microsecond=0).timestamp()
        return start, start + 3600.0
    day = local.date()
    if period == "day":
        first, nxt = day, day + timedelta(days=1)
    elif period == "week":
        first = day - timedelta(days=day.weekday())  # ISO: Monday
        nxt = first + timedelta(days=7)
    elif period == "month":
        first = day.replace(day=1)
        nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return _midnight(first, tz), _midnight(nxt, tz)


def _midnight(d: date, tz: ZoneInfo) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()


def rolling_step(length_s: int) -> int:
    """The sub-bucket size for a rolling window: the smallest listed size that
    cuts it into at most MAX_SUB_BUCKETS."""
    for step in _STEPS:
        if math.ceil(length_s / step) <= MAX_SUB_BUCKETS:
            return step
    return 60 * math.ceil(length_s / MAX_SUB_BUCKETS / 60)


def iso_in(ts: float, tz: ZoneInfo) -> str:
    """`ts` as ISO 8601 in zone `tz`, e.g. 2026-12-01T00:00:00+01:00."""
    dt = datetime.fromtimestamp(ts, tz)
    return dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")


class CalendarClock:
    """A calendar window: one bucket per period."""

    __slots__ = ("period", "tz", "spec", "_span")

    def __init__(self, period: str, timezone: str) -> None:
        self.period = period
        self.tz = ZoneInfo(timezone)
        self.spec = f"{period}@{timezone}"
        self._span = (0.0, 0.0)

    def describe(self) -> str:
        return self.period if self.tz.key == "UTC" else f"{self.period} ({self.tz.key})"

    def span(self, now: float) -> tuple[float, float]:
        start, end = self._span
        if start <= now < end:
            return self._span
        self._span = span = calendar_span(self.period, self.tz, now)
        return span

    def place(self, prefix: str, now: float) -> Placement:
        start, end = self.span(now)
        counter = f"{prefix}|{int(start)}"
        return Placement(counter, (counter,), start, end, end, end, start, end, iso_in(end, self.tz))


class RollingClock:
    """A rolling window of `length` seconds over sub-buckets of `step` seconds."""

    __slots__ = ("length", "step", "n", "spec", "text", "tz")

    def __init__(self, length_s: int, text: str, timezone: str = "UTC") -> None:
        self.length = length_s
        self.step = rolling_step(length_s)
        self.n = math.ceil(length_s / self.step)
        self.spec = f"rolling{text}/{self.step}"
        self.text = text
        self.tz = ZoneInfo(timezone)  # only for showing times

    def describe(self) -> str:
        return f"rolling {self.text}"

    def span(self, now: float) -> tuple[float, float]:
        idx = int(now // self.step)
        return float((idx - self.n) * self.step), float((idx + 1) * self.step)

    def place(self, prefix: str, now: float) -> Placement:
        step, n = self.step, self.n
        idx = int(now // step)
        check = Checked(f"{prefix}|r{i}" for i in range(idx, idx - n - 1, -1))  # reused while current: a running sum
        start, end = float((idx - n) * step), float((idx + 1) * step)
        return Placement(
            counter=check[0],
            check=check,
            window_start=start,
            window_end=end,
            resets_at=end,  # the oldest checked sub-bucket leaves when this one ends
            expires_at=float((idx + n + 1) * step),
            valid_from=float(idx * step),
            valid_until=end,
            reset_iso=iso_in(end, self.tz),
        )

    def first_bucket(self, now: float) -> int:
        """The oldest sub-bucket index checked at `now` (ledger rebuild)."""
        return int(now // self.step) - self.n


WindowClock = CalendarClock | RollingClock


def window_clock(window: Window) -> WindowClock:
    if window.period is not None:
        return CalendarClock(window.period, window.timezone)
    assert window.rolling is not None and window.rolling_seconds is not None
    return RollingClock(window.rolling_seconds, window.rolling, window.timezone)


__all__ = [
    "CalendarClock",
    "Placement",
    "RollingClock",
    "WindowClock",
    "calendar_span",
    "iso_in",
    "rolling_step",
    "window_clock",
]
