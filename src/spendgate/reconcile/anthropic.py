"""Anthropic Admin API reports: Usage (messages) and Cost.

- Usage: `GET /v1/organizations/usage_report/messages?group_by[]=model` -> {data:
  [{starting_at, ending_at, results: [{uncached_input_tokens,
  cache_read_input_tokens, cache_creation: {ephemeral_5m_input_tokens,
  ephemeral_1h_input_tokens}, output_tokens, model, ...}]}], has_more, next_page}.
  The ledger's input_tokens counts every prompt token, so input = uncached +
  cache reads + cache writes.
- Cost: `GET /v1/organizations/cost_report?group_by[]=description` -> results
  with `amount` as a decimal string in the currency's LOWEST unit (cents:
  "123.45" USD is $1.2345), `currency` and `model` (null for non-token costs
  such as web search). Amounts are divided by 100, exactly.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from spendgate.reconcile.figures import (
    ProviderFigure,
    ReconcileError,
    day_of_iso,
    decimal_of,
    int_of,
    load_json,
    normalize_model,
    pages_of,
)

CENTS = Decimal(100)


def _buckets(path: str | Path) -> list[tuple[str, list[dict[str, Any]]]]:
    out = []
    for page in pages_of(load_json(path), path):
        for b in page["data"]:
            if not isinstance(b, dict) or "starting_at" not in b or not isinstance(b.get("results"), list):
                raise ReconcileError(f"{path}: a bucket lacks starting_at or results: {str(b)[:120]}")
            out.append((day_of_iso(b["starting_at"]), b["results"]))
    return out


def import_usage(path: str | Path) -> list[ProviderFigure]:
    figures = []
    for day, results in _buckets(path):
        for r in results:
            if not isinstance(r, dict) or "uncached_input_tokens" not in r:
                raise ReconcileError(f"{path}: a usage result lacks uncached_input_tokens: {str(r)[:120]}")
            creation = r.get("cache_creation") or {}
            if not isinstance(creation, dict):
                raise ReconcileError(f"{path}: cache_creation is not an object")
            writes = sum(int_of(v, f"cache_creation.{k}") for k, v in creation.items())
            reads = int_of(r.get("cache_read_input_tokens"), "cache_read_input_tokens")
            figures.append(
                ProviderFigure(
                    day=day,
                    model=normalize_model(r.get("model")),
                    input_tokens=int_of(r["uncached_input_tokens"], "uncached_input_tokens") + reads + writes,
                    output_tokens=int_of(r.get("output_tokens"), "output_tokens"),
                    cache_read_tokens=reads,
                    cache_write_tokens=writes,
                )
            )
    return figures


def import_cost(path: str | Path) -> list[ProviderFigure]:
    figures = []
    for day, results in _buckets(path):
        for r in results:
            if not isinstance(r, dict) or "amount" not in r:
                raise ReconcileError(f"{path}: a cost result lacks amount: {str(r)[:120]}")
            figures.append(
                ProviderFigure(
                    day=day,
                    model=normalize_model(r.get("model")),
                    cost=decimal_of(r["amount"], "amount") / CENTS,
                    currency=str(r.get("currency") or "USD").upper(),
                )
            )
    return figures
