"""Prices as data: the genai-prices catalog, config overrides, self-hosted rates.

`PriceCatalog.price()` turns token usage into exact decimal money. It never
answers $0 for a model it does not know: such results carry
`status="missing"`, and the model is remembered so reports and alerts can
list it.

Exactness: catalog and per-token prices are exact decimals (a price per
million tokens times a token count, divided by 10^6, loses nothing). Only
results that come from a true division — a percentage discount, a GPU-hour
rate spread over throughput — are rounded, once, to 12 decimal places with
ROUND_HALF_EVEN (`quantize_cost`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Protocol

from spendgate.config import CATALOG_PROVIDER, Config, Deployment, GpuHourPrice, PriceOverride, TokenPrice
from spendgate.pricing.listprices import GenaiPrices

log = logging.getLogger("spendgate.pricing")

ZERO = Decimal(0)
MILLION = Decimal(1_000_000)
HOUR = Decimal(3600)
COST_PLACES = 12  # decimal places kept for costs that came from a division
_SCALE = 10**COST_PLACES


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Normalized usage: `input_tokens` includes cached and cache-write tokens."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0  # part of output_tokens, billed as output
    cache_write_1h_tokens: int = 0  # part of cache_write_tokens: Anthropic one-hour writes


@dataclass(frozen=True, slots=True)
class Priced:
    cost: Decimal  # what the call costs after negotiated discounts
    list_cost: Decimal  # the catalog list price, before discounts
    status: str  # priced | missing
    source: str | None  # e.g. "genai-prices:openai/gpt-4o", "config:prices", "config:deployment/x:gpu_hour"


class PriceCatalog(Protocol):
    def price(self, provider: str | None, model: str, usage: TokenUsage, deployment: str | None = None) -> Priced: ...

    def missing_models(self) -> set[tuple[str | None, str]]: ...


def quantize_cost(value: Fraction | Decimal) -> Decimal:
    """Round an exact quotient to 12 places, half to even, independent of the decimal context.

    The quotient is kept as a `Fraction` until this single rounding, so there
    is no double rounding through the 28-digit decimal context.
    """
    return Decimal(round(Fraction(value) * _SCALE)).scaleb(-COST_PLACES)


def token_price_cost(p: TokenPrice, u: TokenUsage) -> Decimal:
    """Per-million-token prices; cache reads/writes default to the input price,
    one-hour writes to the write price. Exact."""
    read = p.cache_read_per_mtok if p.cache_read_per_mtok is not None else p.input_per_mtok
    write = p.cache_write_per_mtok if p.cache_write_per_mtok is not None else p.input_per_mtok
    write_1h = p.cache_write_1h_per_mtok if p.cache_write_1h_per_mtok is not None else write
    plain_input = u.input_tokens - u.cache_read_tokens - u.cache_write_tokens
    total = (
        plain_input * p.input_per_mtok
        + u.cache_read_tokens * read
        + (u.cache_write_tokens - u.cache_write_1h_tokens) * write
        + u.cache_write_1h_tokens * write_1h
        + u.output_tokens * p.output_per_mtok  # reasoning tokens are inside output_tokens
    )
    return total / MILLION


def gpu_hour_cost(g: GpuHourPrice, u: TokenUsage) -> Decimal:
    """The GPU time the call occupied (input and output at measured rates) at the hourly rate."""
    seconds = Fraction(u.input_tokens) / Fraction(g.input_tokens_per_second) + Fraction(u.output_tokens) / Fraction(
        g.output_tokens_per_second
    )
    return quantize_cost(Fraction(g.hourly_rate) * seconds / 3600)


def discounted(list_cost: Decimal, discount_percent: Decimal) -> Decimal:
    return quantize_cost(Fraction(list_cost) * (100 - Fraction(discount_percent)) / 100)


def catalog_provider(provider: str | None) -> str | None:
    """A spendgate provider kind (`azure_openai`) → its genai-prices id (`azure`); ids pass through."""
    if provider is None:
        return None
    return CATALOG_PROVIDER.get(provider, provider)


_prices = GenaiPrices()


def _catalog_lookup(
    provider: str | None, model: str, usage: TokenUsage, at: datetime | None = None
) -> tuple[Decimal, str] | None:
    """The genai-prices list cost and its source, or None for an unknown model.

    Equal to `genai_prices.calc_price(...).total_price`, at a few µs a call.
    """
    found = _prices.price(provider, model, usage, at)
    return None if found is None else (found.total, found.source)


class Catalog:
    """The default `PriceCatalog`: config first, then genai-prices.

    Order: a deployment's own `gpu_hour` or `price`; then a `prices:` override
    for the (catalog provider, model) — a fixed price, a GPU-hour rate, or a
    discount on the list price; then the genai-prices list price.
    """

    def __init__(self, config: Config) -> None:
        self._overrides: list[tuple[frozenset[str], str, PriceOverride]] = [
            (frozenset(p for p in (o.provider, catalog_provider(o.provider)) if p), o.model.lower(), o)
            for o in config.prices
        ]
        self._deployments: dict[str, Deployment] = {d.name: d for d in config.deployments}
        self._missing: set[tuple[str | None, str]] = set()
        self._lock = threading.Lock()

    def _override_for(self, providers: frozenset[str], model: str) -> PriceOverride | None:
        """The first override for `model` whose provider (kind or catalog id) is one of the call's."""
        model = model.lower()
        for o_providers, o_model, o in self._overrides:
            if o_model == model and (not o_providers or o_providers & providers):
                return o
        return None

    def price(
        self,
        provider: str | None,
        model: str,
        usage: TokenUsage,
        deployment: str | None = None,
        *,
        at: datetime | None = None,
    ) -> Priced:
        """Price one call. `at` (default now) selects date-conditional catalog prices."""
        given = provider  # a provider kind or a catalog id
        provider = catalog_provider(provider)
        dep = self._deployments.get(deployment) if deployment else None
        if dep is not None:
            if dep.gpu_hour is not None:
                c = gpu_hour_cost(dep.gpu_hour, usage)
                return Priced(c, c, "priced", f"config:deployment/{dep.name}:gpu_hour")
            provider = dep.catalog_provider
            model = dep.price_model or model
            if dep.price is not None:
                c = token_price_cost(dep.price, usage)
                listed = self._list(provider, model, usage, at)
                return Priced(c, listed[0] if listed else c, "priced", f"config:deployment/{dep.name}")
        override = None
        if self._overrides:  # matched by the provider as given, as a catalog id, or the deployment's kind
            names = frozenset(n for n in (given, provider, dep.provider if dep else None) if n)
            override = self._override_for(names, model)
        if override is not None and override.discount_percent is None:
            if override.gpu_hour is not None:
                c = gpu_hour_cost(override.gpu_hour, usage)
                return Priced(c, c, "priced", "config:prices:gpu_hour")
            assert override.price is not None
            c = token_price_cost(override.price, usage)
            listed = self._list(provider, model, usage, at)
            return Priced(c, listed[0] if listed else c, "priced", "config:prices")
        found = self._list(provider, model, usage, at)
        if found is None:
            self._note_missing(provider, model)
            return Priced(ZERO, ZERO, "missing", None)
        list_cost, source = found
        if override is not None and override.discount_percent is not None:
            return Priced(discounted(list_cost, override.discount_percent), list_cost, "priced", f"{source}+config:discount")
        return Priced(list_cost, list_cost, "priced", source)

    def _list(
        self, provider: str | None, model: str, usage: TokenUsage, at: datetime | None
    ) -> tuple[Decimal, str] | None:
        try:
            found = _catalog_lookup(provider, model, usage, at)
            if found is None and provider is not None:
                # e.g. an OpenAI-compatible server serving a known open model
                found = _catalog_lookup(None, model, usage, at)
        except ValueError as e:  # usage genai-prices can not decompose for this model's units
            self._note_missing(provider, model, reason=str(e))
            return None
        return found

    def _note_missing(self, provider: str | None, model: str, reason: str | None = None) -> None:
        key = (provider, model)
        with self._lock:
            if key in self._missing:
                return
            self._missing.add(key)
        log.warning(
            "no price for model %r (provider %r)%s: its calls are recorded with price_status=missing and cost 0; "
            "add it under `prices:` in the config",
            model,
            provider,
            f" ({reason})" if reason else "",
        )

    def blended_price(self, dep: Deployment) -> Decimal | None:
        """Cost of a typical million tokens on `dep` (3 input : 1 output, the
        usual blend), for ranking deployments by price; None when unpriced."""
        usage = TokenUsage(input_tokens=750_000, output_tokens=250_000)
        priced = self.price(dep.catalog_provider, dep.price_model or dep.model, usage, dep.name)
        return priced.cost if priced.status == "priced" else None

    def missing_models(self) -> set[tuple[str | None, str]]:
        with self._lock:
            return set(self._missing)
