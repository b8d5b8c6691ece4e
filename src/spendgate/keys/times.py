"""Times and durations as the admin API and the CLI write them.

Standard library only, so the CLI can parse `--expires 90d` without loading
pydantic. Inside spendgate times are UNIX seconds; at the edges, ISO 8601 UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, UTC)
    text = dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def timestamp(dt: datetime) -> float:
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def parse_duration(text: str) -> float:
    """Seconds in `90`, `90s`, `30m`, `1h`, `7d`, `2w`."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"duration {text!r}: use a number with s, m, h, d or w (e.g. 1h)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_when(text: str, now: float) -> float:
    """A point in time: ISO datetime (UTC unless it says otherwise), a bare date
    (00:00 UTC that day), or a duration from now with its unit (`30d`)."""
    m = _DURATION.match(text)
    if m and m.group(2):
        return now + float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"time {text!r}: use 2026-12-31, 2026-12-31T18:00:00Z or a duration such as 30d") from None
    return timestamp(dt)
