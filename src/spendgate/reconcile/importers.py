"""Format name -> importer, and which ledger provider each format speaks for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from spendgate.reconcile import anthropic, csvfile, openai
from spendgate.reconcile.figures import ProviderFigure

Importer = Callable[[str | Path], list[ProviderFigure]]

FORMATS: dict[str, Importer] = {
    "openai-costs": openai.import_costs,
    "openai-usage": openai.import_usage,
    "anthropic-usage": anthropic.import_usage,
    "anthropic-cost": anthropic.import_cost,
    "csv": csvfile.import_csv,
}

# Ledger `provider` values compared with each format (None: every provider).
PROVIDERS: dict[str, tuple[str, ...] | None] = {
    "openai-costs": ("openai",),
    "openai-usage": ("openai",),
    "anthropic-usage": ("anthropic",),
    "anthropic-cost": ("anthropic",),
    "csv": None,
}


def import_file(fmt: str, path: str | Path) -> list[ProviderFigure]:
    return FORMATS[fmt](path)
