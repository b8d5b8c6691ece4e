"""Time-window parsing for `--since` / `--until`.

Accepted forms (all become unix seconds):
- relative to now: `90s`, `90m`, `24h`, `30d`, `2w` (may be fractional: `1.5h`)
- `now`, `today` (00:00 UTC), `yesterday` (00:00 UTC the day before)
- an ISO date `2024-05-01` (00:00 UTC) or datetime `2024-05-01T12:30`,
  `2024-05-01 12:30:00+02:00`, `2024-05-01T10:30Z` (no offset means UTC)
- unix seconds: `1714521600`
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$", re.IGNORECASE)
_NUMBER = re.compile(r"^\d{9,}(?:\.\d+)?$")


def parse_time(value: str, now: float | None = None) -> float:
    """Unix seconds for a `--since`/`--until` value; ValueError if it is none of the forms."""
    text = value.strip()
    now = time.time() if now is None else now
    lower = text.lower()
    if lower == "now":
        return now
    if lower in ("today", "yesterday"):
        day = datetime.fromtimestamp(now, UTC).date()
        if lower == "yesterday":
            day -= timedelta(days=1)
        return _midnight(day)
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2).lower()]
    if _NUMBER.match(text):
        return float(text)
    try:
        if len(text) == 10:
            return _midnight(date.fromisoformat(text))
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"cannot read time {value!r}: use 30d, 24h, 90m, 2w, today, an ISO date "
            "(2024-05-01) or datetime (2024-05-01T12:00Z)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _midnight(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def format_time(ts: float | None) -> str:
    """ISO 8601 UTC text for a timestamp ('' for None)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
