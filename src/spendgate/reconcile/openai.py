"""OpenAI organization exports: Costs API and Completions Usage API.

- Costs: `GET /v1/organization/costs?group_by=line_item` -> page {data: [bucket
  {start_time, end_time, results: [{amount: {value, currency}, line_item,
  project_id}]}]}. `line_item` reads like "gpt-4o-2024-08-06, input": the model
  is the text before the first comma. Without group_by=line_item it is null and
  the comparison falls back to one row per day.
- Usage: `GET /v1/organization/usage/completions?group_by=model` -> buckets
  whose results carry input_tokens (cached included), output_tokens,
  input_cached_tokens, num_model_requests and model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spendgate.reconcile.figures import (
    ProviderFigure,
    ReconcileError,
    day_of_unix,
    decimal_of,
    int_of,
    load_json,
    normalize_model,
    pages_of,
)


def _buckets(path: str | Path) -> list[tuple[str, list[dict[str, Any]]]]:
    out = []
    for page in pages_of(load_json(path), path):
        for b in page["data"]:
            if not isinstance(b, dict) or "start_time" not in b or not isinstance(b.get("results"), list):
                raise ReconcileError(f"{path}: a bucket lacks start_time or results: {str(b)[:120]}")
            out.append((day_of_unix(b["start_time"]), b["results"]))
    return out


def _line_item_model(line_item: Any) -> str | None:
    if not isinstance(line_item, str) or not line_item.strip():
        return None
    return normalize_model(line_item.split(",", 1)[0])


def import_costs(path: str | Path) -> list[ProviderFigure]:
    figures = []
    for day, results in _buckets(path):
        for r in results:
            amount = r.get("amount") if isinstance(r, dict) else None
            if not isinstance(amount, dict) or "value" not in amount:
                raise ReconcileError(f"{path}: a costs result lacks amount.value: {str(r)[:120]}")
            figures.append(
                ProviderFigure(
                    day=day,
                    model=_line_item_model(r.get("line_item")),
                    cost=decimal_of(amount["value"], "amount.value"),
                    currency=str(amount.get("currency") or "usd").upper(),
                )
            )
    return figures


def import_usage(path: str | Path) -> list[ProviderFigure]:
    figures = []
    for day, results in _buckets(path):
        for r in results:
            if not isinstance(r, dict) or "input_tokens" not in r:
                raise ReconcileError(f"{path}: a usage result lacks input_tokens: {str(r)[:120]}")
            figures.append(
                ProviderFigure(
                    day=day,
                    model=normalize_model(r.get("model")),
                    input_tokens=int_of(r.get("input_tokens"), "input_tokens"),
                    output_tokens=int_of(r.get("output_tokens"), "output_tokens"),
                    cache_read_tokens=int_of(r.get("input_cached_tokens"), "input_cached_tokens"),
                    requests=int_of(r.get("num_model_requests"), "num_model_requests"),
                )
            )
    return figures
