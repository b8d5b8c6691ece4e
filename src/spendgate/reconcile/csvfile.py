"""A generic CSV export: one line per day (and model), for any provider or a
spreadsheet of invoice lines.

Columns (header names, case-insensitive; the first of each list found wins):
- day: `date`, `day`, `usage_date` (YYYY-MM-DD or an ISO datetime, UTC)
- model: `model`, `model_id`, `sku` (optional: without it, one row per day)
- cost: `cost`, `amount`, `cost_usd` (optional if token columns are present)
- tokens: `input_tokens`, `output_tokens`, `cache_read_tokens`,
  `cache_write_tokens`; requests: `requests`, `num_requests` (all optional)
- currency: `currency` (optional, default USD)
"""

from __future__ import annotations

import csv
from pathlib import Path

from spendgate.reconcile.figures import (
    ProviderFigure,
    ReconcileError,
    day_of_iso,
    decimal_of,
    int_of,
    normalize_model,
)

ALIASES: dict[str, tuple[str, ...]] = {
    "day": ("date", "day", "usage_date"),
    "model": ("model", "model_id", "sku"),
    "cost": ("cost", "amount", "cost_usd"),
    "input_tokens": ("input_tokens",),
    "output_tokens": ("output_tokens",),
    "cache_read_tokens": ("cache_read_tokens",),
    "cache_write_tokens": ("cache_write_tokens",),
    "requests": ("requests", "num_requests"),
    "currency": ("currency",),
}
_COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "requests")


def import_csv(path: str | Path) -> list[ProviderFigure]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = {h.strip().lower(): h for h in (reader.fieldnames or [])}
            col = {k: next((header[a] for a in names if a in header), None) for k, names in ALIASES.items()}
            if col["day"] is None:
                raise ReconcileError(f"{path}: no date column (one of {', '.join(ALIASES['day'])})")
            if col["cost"] is None and not any(col[c] for c in _COUNTS):
                raise ReconcileError(f"{path}: neither a cost column nor token/request columns")
            figures = []
            for n, row in enumerate(reader, start=2):
                where = f"{path}, line {n}"
                raw_day = (row.get(col["day"]) or "").strip()
                day = day_of_iso(raw_day + "T00:00:00Z" if len(raw_day) == 10 else raw_day)
                fig = ProviderFigure(day=day, model=normalize_model(row.get(col["model"])) if col["model"] else None)
                if col["cost"]:
                    fig.cost = decimal_of((row.get(col["cost"]) or "").strip(), f"{where}: cost")
                for c in _COUNTS:
                    if col[c] and (row.get(col[c]) or "").strip():
                        setattr(fig, c, int_of(row[col[c]].strip(), f"{where}: {c}"))
                if col["currency"] and (row.get(col["currency"]) or "").strip():
                    fig.currency = row[col["currency"]].strip().upper()
                figures.append(fig)
    except OSError as exc:
        raise ReconcileError(f"cannot read {path}: {exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ReconcileError(f"{path}: not a CSV file ({exc})") from None
    return figures
