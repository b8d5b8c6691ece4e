"""FOCUS 1.2 column rules, checked on a written file (CSV or Parquet).

Why it exists: a FinOps tool rejects (or silently mis-reads) a dataset that
breaks the spec, and it does so far from the gateway. `spendgate export focus
--validate` and the tests run these checks on what was actually written, read
back from disk. It covers what a Usage-only dataset can break: presence,
nullability, data formats, allowed values, the conditional Usage rules and
the period ordering; not the commitment-discount or capacity-reservation rules
(spendgate emits none of those columns).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

# The 21 columns FOCUS 1.2 makes Mandatory.
MANDATORY = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
    "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
)  # fmt: skip

# Every column FOCUS 1.2 defines; any other column must carry the x_ prefix.
SPEC_COLUMNS = frozenset(MANDATORY) | {
    "AvailabilityZone", "BillingAccountType", "CapacityReservationId", "CapacityReservationStatus",
    "ChargeFrequency", "CommitmentDiscountCategory", "CommitmentDiscountId", "CommitmentDiscountName",
    "CommitmentDiscountQuantity", "CommitmentDiscountStatus", "CommitmentDiscountType",
    "CommitmentDiscountUnit", "ConsumedQuantity", "ConsumedUnit", "ContractedUnitPrice", "InvoiceId",
    "ListUnitPrice", "PricingCategory", "PricingCurrency", "PricingCurrencyContractedUnitPrice",
    "PricingCurrencyEffectiveCost", "PricingCurrencyListUnitPrice", "RegionId", "RegionName",
    "ResourceId", "ResourceName", "ResourceType", "ServiceSubcategory", "SkuId", "SkuMeter",
    "SkuPriceDetails", "SkuPriceId", "SubAccountId", "SubAccountName", "SubAccountType", "Tags",
}  # fmt: skip

DECIMAL_COLUMNS = (
    "BilledCost", "ContractedCost", "EffectiveCost", "ListCost", "PricingQuantity", "ConsumedQuantity",
    "ListUnitPrice", "ContractedUnitPrice", "CommitmentDiscountQuantity",
)  # fmt: skip
DATETIME_COLUMNS = ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd")
NOT_NULL = (
    "BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart",
    "ChargeCategory", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost", "EffectiveCost",
    "InvoiceIssuerName", "ListCost", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
    "BillingAccountName", "ChargeDescription",
)  # fmt: skip

ALLOWED: dict[str, frozenset[str]] = {
    "ChargeCategory": frozenset({"Usage", "Purchase", "Tax", "Credit", "Adjustment"}),
    "ChargeClass": frozenset({"Correction"}),
    "ChargeFrequency": frozenset({"One-Time", "Recurring", "Usage-Based"}),
    "PricingCategory": frozenset({"Standard", "Dynamic", "Committed", "Other"}),
    "ServiceCategory": frozenset({
        "AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases",
        "Developer Tools", "Multicloud", "Identity", "Integration", "Internet of Things",
        "Management and Governance", "Media", "Migration", "Mobile", "Networking", "Security",
        "Storage", "Web", "Other",
    }),  # fmt: skip
}
AI_SUBCATEGORIES = frozenset({
    "AI Platforms", "Bots", "Generative AI", "Machine Learning", "Natural Language Processing",
    "Other (AI and Machine Learning)",
})  # fmt: skip

NUMERIC = re.compile(r"^-?(\d+(\.\d+)?|\.\d+)(E-?\d+)?$")  # Numeric Format: no '+', no commas, no units
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")  # Date/Time Format, UTC
CURRENCY = re.compile(r"^[A-Z]{3}$")  # ISO 4217 alphabetic code
UNIT = re.compile(r"^(\d+ )?[A-Z][A-Za-z]*([-/ ][A-Z0-9][A-Za-z]*)*$")  # Unit Format, roughly

Row = dict[str, str | None]


def read_csv(path: str | Path) -> tuple[list[str], list[Row]]:
    """Header and rows; an empty field is a null."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = [{c: (v if v != "" else None) for c, v in zip(header, r)} for r in reader]
    return header, rows


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def read_parquet(path: str | Path) -> tuple[list[str], list[Row]]:
    """Header and rows as text (decimals exact, timestamps in FOCUS format)."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    data = table.to_pylist()
    return list(table.column_names), [{k: _as_text(v) for k, v in r.items()} for r in data]


def read_any(path: str | Path) -> tuple[list[str], list[Row]]:
    return read_parquet(path) if str(path).endswith(".parquet") else read_csv(path)


def _ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def validate(header: Sequence[str], rows: Sequence[Row]) -> list[str]:
    """Every rule broken, as 'row N: Column: what' lines (empty: the file conforms)."""
    problems: list[str] = []
    for c in MANDATORY:
        if c not in header:
            problems.append(f"missing mandatory column {c}")
    for c in header:
        if c not in SPEC_COLUMNS and not c.startswith("x_"):
            problems.append(f"column {c}: not a FOCUS 1.2 column and lacks the x_ prefix")
    if len(set(header)) != len(header):
        problems.append("duplicate column names")
    if problems:
        return problems
    for i, r in enumerate(rows, start=1):
        problems.extend(f"row {i}: {p}" for p in _row_problems(r))
    return problems


def _row_problems(r: Row) -> list[str]:
    out: list[str] = []

    def present(c: str) -> bool:
        return r.get(c) is not None

    for c in NOT_NULL:
        if c in r and not present(c):
            out.append(f"{c}: null")
    for c in DECIMAL_COLUMNS:
        v = r.get(c)
        if v is not None and not NUMERIC.match(v):
            out.append(f"{c}: {v!r} is not in Numeric Format")
    for c in DATETIME_COLUMNS:
        v = r.get(c)
        if v is not None and not DATETIME.match(v):
            out.append(f"{c}: {v!r} is not YYYY-MM-DDTHH:mm:ssZ")
    cur = r.get("BillingCurrency")
    if cur is not None and not CURRENCY.match(cur):
        out.append(f"BillingCurrency: {cur!r} is not an ISO 4217 code")
    for c, allowed in ALLOWED.items():
        v = r.get(c)
        if v is not None and v not in allowed:
            out.append(f"{c}: {v!r} is not an allowed value")
    if r.get("ServiceCategory") == "AI and Machine Learning" and present("ServiceSubcategory"):
        if r["ServiceSubcategory"] not in AI_SUBCATEGORIES:
            out.append(f"ServiceSubcategory: {r['ServiceSubcategory']!r} is not a subcategory of AI and Machine Learning")
    if "BillingAccountType" in r and present("BillingAccountId") != present("BillingAccountType"):
        out.append("BillingAccountType: must be null exactly when BillingAccountId is null")
    for c in ("ConsumedUnit", "PricingUnit"):
        v = r.get(c)
        if v is not None and not UNIT.match(v):
            out.append(f"{c}: {v!r} does not follow Unit Format")
    if r.get("ListUnitPrice") is not None and r["ListUnitPrice"].startswith("-"):
        out.append("ListUnitPrice: negative")

    category, correction = r.get("ChargeCategory"), r.get("ChargeClass") == "Correction"
    if category == "Usage" and not correction:
        for c in ("ConsumedQuantity", "ConsumedUnit", "PricingQuantity", "PricingUnit", "SkuId", "SkuPriceId",
                  "PricingCategory"):  # fmt: skip
            if c in r and not present(c):
                out.append(f"{c}: must not be null on a Usage row")
    if category is not None and category != "Usage":
        for c in ("ConsumedQuantity", "ConsumedUnit"):
            if present(c):
                out.append(f"{c}: must be null unless ChargeCategory is Usage")
    if category == "Tax":
        for c in ("PricingQuantity", "PricingUnit", "SkuId", "SkuPriceId"):
            if present(c):
                out.append(f"{c}: must be null on a Tax row")

    if present("Tags"):
        try:
            tags = json.loads(r["Tags"])  # type: ignore[arg-type]
        except ValueError:
            tags = None
        if not isinstance(tags, dict) or not all(
            isinstance(v, (str, bool, int, float)) or v is None for v in tags.values()
        ):
            out.append("Tags: not a Key-Value Format JSON object")

    try:
        bs, be = _ts(r["BillingPeriodStart"] or ""), _ts(r["BillingPeriodEnd"] or "")
        cs, ce = _ts(r["ChargePeriodStart"] or ""), _ts(r["ChargePeriodEnd"] or "")
    except (ValueError, KeyError):
        return out  # already reported above
    if not bs < be:
        out.append("BillingPeriodStart is not before BillingPeriodEnd")
    if not cs < ce:
        out.append("ChargePeriodStart is not before ChargePeriodEnd")
    if not (bs <= cs and ce <= be):
        out.append("the charge period is not inside the billing period")
    return out
