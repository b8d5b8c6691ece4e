"""List prices from genai-prices, resolved once per model and compiled for speed.

`genai_prices.calc_price` costs ~65 µs a call: it re-resolves the model, then
re-collects, re-validates and re-decomposes the price's units on every call.
The gateway prices every request on one core, so this module does that work
once and keeps only the arithmetic per call:

1. (provider, model) → genai-prices' own `(Provider, ModelInfo)`, cached.
2. `ModelInfo.get_prices(now)` per call, so date-conditional prices
   (e.g. a price change taking effect on a date) still switch on time.
3. That `ModelPrice` + which usage fields are non-zero → a compiled plan:
   for every priced unit, its count as a linear combination of the reported
   fields (genai-prices' leaf decomposition, done once on coefficient
   vectors instead of numbers).
4. Per call: the counts, then genai-prices' own `calc_unit_price` for each unit
   in genai-prices' order, so context tiers (e.g. >200k input tokens) and the
   exact decimal arithmetic are literally genai-prices'.

Anything the plan can not reproduce exactly (genai-prices would raise for
this usage, or a provider-specific special case) runs the unmodified slow
path, so the result always equals `calc_price(...).total_price`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from genai_prices import Usage, data_snapshot
from genai_prices.decompose import is_descendant_or_self
from genai_prices.types import (
    ModelInfo,
    ModelPrice,
    Provider,
    Tier,
    TieredPrices,
    _collect_resolved_model_prices,  # pyright: ignore[reportPrivateUsage]
    calc_unit_price,
)
from genai_prices.units import UnitDef, _get_registry  # pyright: ignore[reportPrivateUsage]
from genai_prices.validation import validate_priced_units

if TYPE_CHECKING:  # catalog.py imports this module
    from spendgate.pricing.catalog import TokenUsage

# The genai-prices usage keys spendgate reports, in `_values()` order.
REPORTED_KEYS: tuple[str, ...] = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_reasoning_tokens",
    "cache_write_1h_tokens",
)
_OPTIONAL = 4  # keys from here on are reported only when non-zero (see genai_usage)
_VALUES = tuple[int, int, int, int, int, int]


def genai_usage(u: TokenUsage) -> Usage:
    """The genai-prices `Usage` spendgate prices `u` as (the reference for the fast path).

    Reasoning tokens stay inside `output_tokens` (both conventions agree) and
    are also reported as `output_reasoning_tokens`, which only changes the price
    of models that bill reasoning separately.
    """
    kwargs: dict[str, Any] = {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_tokens": u.cache_write_tokens,
    }
    if u.reasoning_tokens:
        kwargs["output_reasoning_tokens"] = u.reasoning_tokens
    if u.cache_write_1h_tokens:  # a part of cache_write_tokens (genai-prices' `cache_ttl: 1h` unit)
        kwargs["cache_write_1h_tokens"] = u.cache_write_1h_tokens
    return Usage(**kwargs)


def _values(u: TokenUsage) -> _VALUES:
    return (
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
        u.reasoning_tokens,
        u.cache_write_1h_tokens,
    )


def _mask(values: Sequence[int]) -> int:
    """Which reported fields are non-zero: genai-prices' inference depends on exactly that."""
    m = 0
    for i, v in enumerate(values):
        if v:
            m |= 1 << i
    return m


@dataclass(frozen=True, slots=True)
class _Term:
    price: Decimal | TieredPrices
    per: int
    # (index into the reported values, coefficient); None = one per request
    coeffs: tuple[tuple[int, int], ...] | None


@dataclass(frozen=True, slots=True)
class _Plan:
    terms: tuple[_Term, ...]
    tiered: bool


_SLOW = object()  # this (price, usage shape) must take genai-prices' own path
_MEMO_SIZE = 4096  # prices remembered per snapshot; beyond, start over


def _compile(model_price: ModelPrice, mask: int) -> _Plan | object:
    registry = _get_registry()
    try:
        resolved = _collect_resolved_model_prices(model_price, registry)
        validate_priced_units(tuple(unit for unit, _ in resolved), registry)
    except ValueError:
        return _SLOW
    # A probe with the same reported keys and the same zero/non-zero shape.
    probe_kwargs: dict[str, int] = {k: (1 if mask >> i & 1 else 0) for i, k in enumerate(REPORTED_KEYS[:_OPTIONAL])}
    for i in range(_OPTIONAL, len(REPORTED_KEYS)):
        if mask >> i & 1:
            probe_kwargs[REPORTED_KEYS[i]] = 1
    probe = Usage(**probe_kwargs)
    n = len(REPORTED_KEYS)

    def raw_vector(unit: UnitDef) -> list[int] | None:
        if unit.usage_key in probe_kwargs:
            return [1 if k == unit.usage_key else 0 for k in REPORTED_KEYS]
        try:
            inferred = getattr(probe, unit.usage_key)
        except ValueError:
            return None  # genai-prices refuses to infer it for this shape of usage
        if inferred != 0:  # pragma: no cover - inference only ever yields 0 or raises
            return None
        return [0] * n

    # genai-prices' compute_leaf_values, on coefficient vectors.
    by_key = {unit.usage_key: unit for unit, _ in resolved if unit.usage_key != "requests"}
    ordered = sorted(by_key.values(), key=lambda unit: (-len(unit.dimensions), unit.usage_key))
    leaves: dict[str, list[int]] = {}
    for unit in ordered:
        vec = raw_vector(unit)
        if vec is None:
            return _SLOW
        for other in ordered:
            if other is not unit and is_descendant_or_self(unit, other):
                vec = [a - b for a, b in zip(vec, leaves[other.usage_key])]
        leaves[unit.usage_key] = vec

    terms = []
    for unit, price in resolved:
        if unit.usage_key == "requests":
            coeffs = None
        else:
            coeffs = tuple((i, c) for i, c in enumerate(leaves[unit.usage_key]) if c)
        terms.append(_Term(price, unit.per, coeffs))
    return _Plan(tuple(terms), any(isinstance(p, TieredPrices) for _, p in resolved))


@dataclass(frozen=True, slots=True)
class ListPrice:
    total: Decimal
    source: str  # "genai-prices:{provider}/{model}"


class GenaiPrices:
    """Cached genai-prices lookups; `price()` equals `calc_price(...).total_price` exactly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: data_snapshot.DataSnapshot | None = None
        self._models: dict[tuple[str | None, str], tuple[Provider, ModelInfo, str] | None] = {}
        self._plans: dict[tuple[int, int], tuple[ModelPrice, _Plan | object]] = {}
        # (provider, model, usage values) -> price, for models whose price does not
        # depend on the date: an exact memo (the same snapshot and usage always
        # give the same price), so repeated usage (a budget's worst case of a
        # repeated prompt) skips the arithmetic. Replaced with the snapshot.
        self._memo: dict[tuple[str | None, str, _VALUES], ListPrice] = {}
        # ModelPrice -> the same with a derived one-hour write price (see `_with_1h_writes`)
        self._derived: dict[int, tuple[ModelPrice, ModelPrice]] = {}

    def resolve(self, provider: str | None, model: str) -> tuple[Provider, ModelInfo, str] | None:
        """genai-prices' (provider, model) for a reference, or None; cached, misses too."""
        snapshot = data_snapshot.get_snapshot()
        if snapshot is not self._snapshot:  # prices were updated (UpdatePrices): start over
            with self._lock:
                if snapshot is not self._snapshot:
                    self._models = {}
                    self._plans = {}
                    self._memo = {}
                    self._derived = {}
                    self._snapshot = snapshot
        key = (provider, model)
        try:
            return self._models[key]
        except KeyError:
            pass
        try:
            p, m = snapshot.find_provider_model(model, None, provider, None)
            found: tuple[Provider, ModelInfo, str] | None = (p, m, f"genai-prices:{p.id}/{m.id}")
        except LookupError:
            found = None
        self._models[key] = found
        return found

    def price(self, provider: str | None, model: str, usage: TokenUsage, at: datetime | None = None) -> ListPrice | None:
        """The catalog list price of `usage`, or None when genai-prices has no such model.

        Raises ValueError where genai-prices does (usage it can not decompose).
        """
        memo = self._memo  # read before resolving: a snapshot change then only drops what this call adds
        found = self.resolve(provider, model)
        if found is None:
            return None
        p, m, source = found
        values = _values(usage)
        if isinstance(m.prices, ModelPrice):  # one price whatever the date
            key = (provider, model, values)
            hit = memo.get(key)
            if hit is not None:
                return hit
            listed = self._price(p, m, m.prices, source, values, usage, at)
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            memo[key] = listed
            return listed
        return self._price(p, m, m.get_prices(at or datetime.now(tz=UTC)), source, values, usage, at)

    def _price(
        self,
        p: Provider,
        m: ModelInfo,
        model_price: ModelPrice,
        source: str,
        values: _VALUES,
        usage: TokenUsage,
        at: datetime | None,
    ) -> ListPrice:
        if usage.cache_write_1h_tokens and _lacks_1h_writes(model_price):
            model_price = self._with_1h_writes(model_price)
            source += DERIVED_1H
            derived = True
        else:
            derived = False
        plan = self._plan(model_price, _mask(values)) if not _special(p, m) else _SLOW
        if plan is not _SLOW:
            assert isinstance(plan, _Plan)
            total = _run(plan, values)
            if total is not None:
                return ListPrice(total, source)
        if derived:
            return ListPrice(model_price.calc_price(genai_usage(usage))["total_price"], source)
        calc = m.calc_price(genai_usage(usage), p, genai_request_timestamp=at)
        return ListPrice(calc.total_price, source)

    def _with_1h_writes(self, model_price: ModelPrice) -> ModelPrice:
        entry = self._derived.get(id(model_price))
        if entry is not None and entry[0] is model_price:
            return entry[1]
        derived = ModelPrice(**{**vars(model_price), "cache_write_1h_mtok": _times(model_price.input_mtok, 2)})
        self._derived[id(model_price)] = (model_price, derived)
        return derived

    def _plan(self, model_price: ModelPrice, mask: int) -> _Plan | object:
        key = (id(model_price), mask)
        entry = self._plans.get(key)
        if entry is not None and entry[0] is model_price:
            return entry[1]
        plan = _compile(model_price, mask)
        self._plans[key] = (model_price, plan)
        return plan


DERIVED_1H = "+derived:cache_write_1h=2x_input"
"""Appended to the price source when one-hour cache writes were priced by Anthropic's
published rule (2x the base input price) because genai-prices has no such price."""


def _lacks_1h_writes(model_price: ModelPrice) -> bool:
    """A model with cache-write prices but no one-hour write price (genai-prices would
    bill one-hour writes at the five-minute rate)."""
    return (
        getattr(model_price, "cache_write_mtok", None) is not None
        and getattr(model_price, "cache_write_1h_mtok", None) is None
        and getattr(model_price, "input_mtok", None) is not None
    )


def _times(price: Decimal | TieredPrices, factor: int) -> Decimal | TieredPrices:
    if isinstance(price, TieredPrices):
        return TieredPrices(base=price.base * factor, tiers=[Tier(start=t.start, price=t.price * factor) for t in price.tiers])
    return price * factor


def _special(p: Provider, m: ModelInfo) -> bool:
    # ModelInfo.calc_price rewrites usage for these (billed audio seconds).
    return p.id == "groq" and m.id in ("whisper-large-v3", "whisper-large-v3-turbo")


def _run(plan: _Plan, values: _VALUES) -> Decimal | None:
    """genai-prices' ModelPrice.calc_price arithmetic; None if a count is negative (it would raise)."""
    total_input = values[0] if plan.tiered else 0
    total = Decimal(0)
    for term in plan.terms:
        if term.coeffs is None:
            count = 1
        else:
            count = 0
            for i, c in term.coeffs:
                count += c * values[i]
            if count < 0:
                return None
        total += calc_unit_price(term.price, count, total_input, term.per)
    return total
