"""The common shape every importer produces, and the rules both sides share."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any



class ReconcileError(ValueError):
    """An import file that cannot be read as the format it was named as."""


@dataclass
class ProviderFigure:
    """What the provider says was used (and, for cost exports, charged) on a
    UTC day for one model. None means "this export does not say"."""

    day: str  # YYYY-MM-DD, UTC
    model: str | None  # normalised (see normalize_model); None: the export has no model
    cost: Decimal | None = None
    input_tokens: int | None = None  # every prompt token, cached ones included (ledger convention)
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    requests: int | None = None
    currency: str = "USD"


_OPENAI_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # gpt-4o-2024-08-06
_COMPACT_SNAPSHOT = re.compile(r"-\d{8}$")  # claude-sonnet-4-20250514


def normalize_model(name: str | None) -> str | None:
    """The key both sides are joined on: lower case, no `provider/` prefix, no
    dated snapshot suffix (gpt-4o-2024-08-06 -> gpt-4o,
    claude-sonnet-4-20250514 -> claude-sonnet-4). Providers bill the snapshot
    while callers ask for the alias; the ledger records either."""
    if name is None:
        return None
    text = name.strip().lower()
    if not text:
        return None
    if "/" in text:
        text = text.rsplit("/", 1)[1]
    text = _OPENAI_SNAPSHOT.sub("", text)
    return _COMPACT_SNAPSHOT.sub("", text)


def day_of_unix(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d")
    except (TypeError, ValueError, OverflowError):
        raise ReconcileError(f"bucket time {ts!r} is not unix seconds") from None


def day_of_iso(text: Any) -> str:
    if not isinstance(text, str):
        raise ReconcileError(f"bucket time {text!r} is not an ISO 8601 string")
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReconcileError(f"bucket time {text!r} is not an ISO 8601 datetime") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%d")


def decimal_of(value: Any, what: str) -> Decimal:
    """Exact: JSON numbers are parsed as Decimal (never float) before they get here."""
    if isinstance(value, bool) or value is None:
        raise ReconcileError(f"{what}: {value!r} is not an amount")
    try:
        d = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ReconcileError(f"{what}: {value!r} is not an amount") from None
    if not d.is_finite():
        raise ReconcileError(f"{what}: {value!r} is not a finite amount")
    return d


def int_of(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ReconcileError(f"{what}: {value!r} is not a count")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ReconcileError(f"{what}: {value!r} is not a count") from None
    if not d.is_finite() or d != d.to_integral_value() or d < 0:
        raise ReconcileError(f"{what}: {value!r} is not a whole, non-negative count")
    return int(d)


def load_json(path: str | Path) -> Any:
    """A JSON file, numbers as Decimal (exact money). A file of several pages
    (a JSON list of page objects, or one page object per line) is accepted,
    so paginated API responses can be saved as they come."""
    import json

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReconcileError(f"cannot read {path}: {exc}") from None
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError:
        pass
    try:
        pages = [json.loads(line, parse_float=Decimal) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise ReconcileError(f"{path}: not JSON ({exc})") from None
    if not pages:
        raise ReconcileError(f"{path}: empty file")
    return pages


def pages_of(data: Any, path: str | Path) -> list[dict[str, Any]]:
    """The page objects in a loaded file; each must have a `data` list of buckets."""
    pages = data if isinstance(data, list) else [data]
    for p in pages:
        if not isinstance(p, dict) or not isinstance(p.get("data"), list):
            raise ReconcileError(
                f"{path}: expected the API's page object ({{\"data\": [buckets...], ...}}) or a list of them"
            )
    return pages


