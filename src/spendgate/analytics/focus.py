"""FOCUS 1.2 rows from the ledger, so a FinOps tool can load gateway spend
next to the cloud bills it already reads.

Grain (`grain`):
- `hour` / `day` (default `day`): one row per UTC charge period x provider x
  deployment x model x virtual key x tag set (every tag column and free-form
  tag) x price status x cache status. Charge periods never cross a month, so
  every row sits inside one billing period (the UTC calendar month).
- `event`: one row per ledger event (x_EventId, x_RequestId added).

Money is never re-derived: BilledCost = EffectiveCost = ContractedCost = the
ledger's `cost`, ListCost = `list_cost`, summed with `dsum` (exact), so the
rows add up to the ledger's total digit for digit. The ledger prices an
attempt as a whole (tiered, cached and discounted prices), so a row's cost is
not split by token type; ConsumedQuantity is the row's tokens (input, cached
input included, plus output) and x_ columns break them down by type.
"""

from __future__ import annotations

import calendar
import csv
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import orjson

from spendgate.analytics.focus_schema import FocusConfig
from spendgate.ledger.events import TAG_COLUMNS
from spendgate.ledger.sqlite import TABLE, time_window

Grain = Literal["hour", "day", "event"]
GRAINS: tuple[str, ...] = ("hour", "day", "event")
FOCUS_VERSION = "1.2"

# FOCUS columns this export writes, in the spec's (alphabetical) order.
FOCUS_COLUMNS: tuple[str, ...] = (
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingAccountType",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SkuId",
    "SkuPriceId",
    "Tags",
)

# spendgate's own columns (FOCUS: custom columns carry the x_ prefix).
X_COLUMNS: tuple[str, ...] = (
    "x_RequestCount",
    "x_ErrorCount",
    "x_InputTokens",
    "x_OutputTokens",
    "x_CacheReadTokens",
    "x_CacheWriteTokens",
    "x_ReasoningTokens",
    "x_SavedCost",
    "x_PriceStatus",
    "x_CacheStatus",
    "x_KeyId",
    "x_Deployment",
    "x_Model",
)
EVENT_X_COLUMNS: tuple[str, ...] = ("x_EventId", "x_RequestId")

MONEY_COLUMNS = ("BilledCost", "ContractedCost", "EffectiveCost", "ListCost", "x_SavedCost")
QUANTITY_COLUMNS = ("ConsumedQuantity", "PricingQuantity")
INTEGER_COLUMNS = (
    "x_RequestCount",
    "x_ErrorCount",
    "x_InputTokens",
    "x_OutputTokens",
    "x_CacheReadTokens",
    "x_CacheWriteTokens",
    "x_ReasoningTokens",
)
DATETIME_COLUMNS = ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd")
PARQUET_MONEY_SCALE = 12  # the ledger's cost precision (pricing.catalog.COST_PLACES)


def columns(grain: str) -> tuple[str, ...]:
    return FOCUS_COLUMNS + X_COLUMNS + (EVENT_X_COLUMNS if grain == "event" else ())


# --- time ----------------------------------------------------------------


def iso(ts: float) -> str:
    """FOCUS Date/Time Format: YYYY-MM-DDTHH:mm:ssZ, UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def month_bounds(ts: float) -> tuple[int, int]:
    """[start, end) of the UTC calendar month holding ts: the billing period."""
    d = datetime.fromtimestamp(ts, UTC)
    start = datetime(d.year, d.month, 1, tzinfo=UTC)
    end = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp())


def parse_month(text: str) -> tuple[float, float]:
    """`2026-11` -> [start, end) unix seconds; ValueError otherwise."""
    try:
        d = datetime.strptime(text.strip(), "%Y-%m")
    except ValueError:
        raise ValueError(f"--month {text!r}: write YYYY-MM, e.g. 2026-11") from None
    start = datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()
    days = calendar.monthrange(d.year, d.month)[1]
    return start, start + days * 86400


# --- rows ----------------------------------------------------------------

_TAG_SQL = ", ".join(TAG_COLUMNS)
_SUMS = (
    "count(*), sum(status != 'ok'), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), "
    "sum(cache_write_tokens), sum(reasoning_tokens), coalesce(dsum(cost), '0'), "
    "coalesce(dsum(list_cost), '0'), coalesce(dsum(saved), '0')"
)
_DIMS = f"provider, deployment, model_used, key_id, {_TAG_SQL}, tags, price_status, cache_status, currency"
_NDIMS = 8 + len(TAG_COLUMNS)


@dataclass
class _Group:
    """One output row before it is spelled out in FOCUS terms."""

    start: float
    end: float
    provider: str
    deployment: str
    model: str
    key_id: str | None
    tags: dict[str, str]
    price_status: str
    cache_status: str
    currency: str
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = Decimal(0)
    list_cost: Decimal = Decimal(0)
    saved: Decimal = Decimal(0)
    event_id: str | None = None
    request_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, values: Sequence[Any]) -> None:
        n, err, inp, out, cr, cw, rs, cost, lst, saved = values
        self.requests += int(n or 0)
        self.errors += int(err or 0)
        self.input_tokens += int(inp or 0)
        self.output_tokens += int(out or 0)
        self.cache_read_tokens += int(cr or 0)
        self.cache_write_tokens += int(cw or 0)
        self.reasoning_tokens += int(rs or 0)
        self.cost += Decimal(cost)
        self.list_cost += Decimal(lst)
        self.saved += Decimal(saved)


def _tags(row: Sequence[Any], offset: int, free: str | None) -> dict[str, str]:
    out = {name: row[offset + i] for i, name in enumerate(TAG_COLUMNS) if row[offset + i] is not None}
    if free:
        for k, v in (orjson.loads(free) or {}).items():
            out.setdefault(str(k), str(v))
    return dict(sorted(out.items()))


def _groups(store: Any, since: float | None, until: float | None, grain: str) -> Iterator[_Group]:
    where, params = time_window(since, until)
    if grain == "event":
        sql = (
            f"SELECT ts_start, ts_end, {_DIMS}, event_id, request_id, 1, status != 'ok', input_tokens, "
            "output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, cost, list_cost, saved "
            f"FROM {TABLE}{where} ORDER BY ts_start, event_id"
        )
        for row in store.query(sql, params):
            start = float(math.floor(row[0]))
            b_end = month_bounds(start)[1]
            end = min(max(float(math.ceil(row[1] or 0)), start + 1), b_end)
            g = _make(row, 2, start, end)
            g.event_id, g.request_id = row[2 + _NDIMS], row[3 + _NDIMS]
            g.add(row[4 + _NDIMS:])
            yield g
        return
    width = 3600 if grain == "hour" else 86400
    bucket = f"CAST(ts_start / {width} AS INTEGER) * {width}"
    sql = f"SELECT {bucket} AS b, {_DIMS}, {_SUMS} FROM {TABLE}{where} GROUP BY b, {_DIMS} ORDER BY b"
    merged: dict[tuple[Any, ...], _Group] = {}
    for row in store.query(sql, params):
        start = float(row[0])
        g = _make(row, 1, start, start + width)
        # free-form tags are JSON text: the same set written in another order is one group
        key = (start, g.provider, g.deployment, g.model, g.key_id, tuple(g.tags.items()),
               g.price_status, g.cache_status, g.currency)
        g = merged.setdefault(key, g)
        g.add(row[1 + _NDIMS:])
    yield from merged.values()


def _make(row: Sequence[Any], o: int, start: float, end: float) -> _Group:
    n = len(TAG_COLUMNS)
    return _Group(
        start=start,
        end=end,
        provider=row[o] or "",
        deployment=row[o + 1] or "",
        model=row[o + 2] or "unknown",
        key_id=row[o + 3],
        tags=_tags(row, o + 4, row[o + 4 + n]),
        price_status=row[o + 5 + n] or "priced",
        cache_status=row[o + 6 + n] or "bypass",
        currency=(row[o + 7 + n] or "USD").upper(),
    )


def _focus_row(g: _Group, cfg: FocusConfig, grain: str) -> dict[str, Any]:
    b_start, b_end = month_bounds(g.start)
    provider = cfg.provider_name(g.provider)
    tokens = g.input_tokens + g.output_tokens
    what = "cache hits" if g.cache_status in ("exact", "semantic") else "tokens"
    unpriced = " (unpriced model: cost unknown, see x_PriceStatus)" if g.price_status == "missing" else ""
    row: dict[str, Any] = {
        "BilledCost": g.cost,
        "BillingAccountId": cfg.billing_account_id,
        "BillingAccountName": cfg.billing_account_name,
        "BillingAccountType": cfg.billing_account_type,
        "BillingCurrency": g.currency,
        "BillingPeriodEnd": iso(b_end),
        "BillingPeriodStart": iso(b_start),
        "ChargeCategory": "Usage",
        "ChargeClass": None,  # FOCUS: null unless the row corrects an earlier period
        "ChargeDescription": f"{g.model} {what} through {g.deployment or 'the gateway'}{unpriced}",
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": iso(g.end),
        "ChargePeriodStart": iso(g.start),
        "ConsumedQuantity": Decimal(tokens),
        "ConsumedUnit": "Tokens",
        "ContractedCost": g.cost,
        "EffectiveCost": g.cost,
        "InvoiceIssuerName": cfg.invoice_issuer or provider,
        "ListCost": g.list_cost,
        "PricingCategory": "Standard",
        "PricingQuantity": Decimal(tokens),
        "PricingUnit": "Tokens",
        "ProviderName": provider,
        "PublisherName": provider,
        "ResourceId": g.deployment or None,
        "ResourceName": g.deployment or None,
        "ResourceType": "LLM Deployment" if g.deployment else None,
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": cfg.service_name(g.provider),
        "ServiceSubcategory": "Generative AI",
        "SkuId": g.model,
        "SkuPriceId": f"{g.provider or 'unknown'}/{g.model}",
        "Tags": orjson.dumps(g.tags).decode(),
        "x_RequestCount": g.requests,
        "x_ErrorCount": g.errors,
        "x_InputTokens": g.input_tokens,
        "x_OutputTokens": g.output_tokens,
        "x_CacheReadTokens": g.cache_read_tokens,
        "x_CacheWriteTokens": g.cache_write_tokens,
        "x_ReasoningTokens": g.reasoning_tokens,
        "x_SavedCost": g.saved,
        "x_PriceStatus": g.price_status,
        "x_CacheStatus": g.cache_status,
        "x_KeyId": g.key_id,
        "x_Deployment": g.deployment or None,
        "x_Model": g.model,
    }
    if grain == "event":
        row["x_EventId"] = g.event_id
        row["x_RequestId"] = g.request_id or None
    return row


def focus_rows(
    store: Any,
    *,
    since: float | None,
    until: float | None,
    grain: str = "day",
    config: FocusConfig | None = None,
) -> list[dict[str, Any]]:
    """FOCUS rows (money as Decimal, None = null) for since <= ts_start < until."""
    if grain not in GRAINS:
        raise ValueError(f"grain {grain!r}: use one of {', '.join(GRAINS)}")
    cfg = config or FocusConfig()
    return [_focus_row(g, cfg, grain) for g in _groups(store, since, until, grain)]


# --- writers -------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return ""  # CSV has no null: FOCUS readers take an empty field as null
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def to_csv(rows: Sequence[dict[str, Any]], grain: str) -> str:
    """CSV with exact decimal strings; an empty field is a null."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = columns(grain)
    w.writerow(cols)
    for r in rows:
        w.writerow([_text(r.get(c)) for c in cols])
    return buf.getvalue()


def _scale(rows: Sequence[dict[str, Any]]) -> int:
    places = PARQUET_MONEY_SCALE
    for r in rows:
        for c in MONEY_COLUMNS:
            exp = r[c].as_tuple().exponent
            if isinstance(exp, int):
                places = max(places, -exp)
    return places


def write_parquet(rows: Sequence[dict[str, Any]], grain: str, path: str | Path) -> None:
    """Parquet with money as decimal128(38, 12) (more places if the ledger holds
    finer amounts: never rounded), quantities as decimal128(38, 0), periods as
    UTC timestamps, integers as int64 and everything else as string."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scale = _scale(rows)
    cols = columns(grain)
    fields = []
    for c in cols:
        if c in MONEY_COLUMNS:
            t = pa.decimal128(38, scale)
        elif c in QUANTITY_COLUMNS:
            t = pa.decimal128(38, 0)
        elif c in INTEGER_COLUMNS:
            t = pa.int64()
        elif c in DATETIME_COLUMNS:
            t = pa.timestamp("s", tz="UTC")
        else:
            t = pa.string()
        fields.append(pa.field(c, t))
    schema = pa.schema(fields, metadata={b"focus_version": FOCUS_VERSION.encode(), b"generator": b"spendgate"})
    data: dict[str, list[Any]] = {c: [] for c in cols}
    for r in rows:
        for c in cols:
            v = r.get(c)
            if c in DATETIME_COLUMNS and v is not None:
                v = datetime.strptime(v, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            data[c].append(v)
    table = pa.table(data, schema=schema)
    pq.write_table(table, str(path))


def total_cost(rows: Sequence[dict[str, Any]]) -> Decimal:
    return sum((r["BilledCost"] for r in rows), Decimal(0))
