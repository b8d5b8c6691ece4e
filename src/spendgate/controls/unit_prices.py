"""Worst-case prices without the catalog's per-call work, where that is provably exact.

Every budgeted call is priced once or twice before it runs (its worst case
on each candidate deployment). Through `Catalog.price` that is a usage
object, the override and catalog lookups and a result object per price —
and, for a prompt size not seen before, genai-prices' arithmetic: 2–10 µs.

For most deployments the price is an affine function of the token counts,
fixed for the life of the process: per-token prices from the config, or a
genai-prices list price that neither changes on a date nor has tiers by
prompt size. For those, price(n_in, n_out) = base + a·n_in + b·n_out
exactly, with a, b and base read off the catalog's own answers at three
usages of the same shape (the same fields zero and non-zero, so genai-prices
decomposes them alike); that costs two Decimal products per price. Decimal
arithmetic on these values is exact (a dozen significant digits), so the
result equals the catalog's (only its exponent may differ: 0.000122 vs
0.00012200).

Anything else is priced by the catalog on every call, as before: GPU-hour
rates and discounts (rounded, so not affine), dated or tiered list prices,
unpriced models (the catalog records them as missing), any `prices:`
override in the config, catalogs other than `Catalog`, and a genai-prices
data snapshot other than the one the coefficients were read from.

Which prices are affine is read from `Catalog` and genai-prices themselves
(`_affine_in_catalog` follows the order of `Catalog.price`): a new kind of
price there must be added here. tests/test_worst_case_cascade.py compares
these amounts with `Catalog.price` for hundreds of catalog models.
"""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

from genai_prices import data_snapshot
from genai_prices.types import ModelPrice, TieredPrices

from spendgate.config import Deployment
from spendgate.pricing.catalog import Catalog, PriceCatalog, TokenUsage, _prices
from spendgate.pricing.listprices import _special

# What a worst case may bill besides input and output: nothing, or every input
# token written to the prompt cache (at the five-minute or the one-hour price).
PLAIN, WRITES_5M, WRITES_1H = 0, 1, 2


class Affine(NamedTuple):
    """price(n_in, n_out) = base + per_input·n_in + per_output·n_out, exactly."""

    base: Decimal
    per_input: Decimal
    per_output: Decimal
    # (plain usage only) every input token written to the prompt cache, at either
    # TTL, costs no more than plain input, whatever the counts: the worst case
    # need not ask whether the call may write (OpenAI models bill writes as input)
    writes_never_dearer: bool = False


def usage(kind: int, n_in: int, n_out: int) -> TokenUsage:
    """The usage a worst case of this kind prices (see `worst_case._cache_writes`)."""
    if kind == PLAIN:
        return TokenUsage(input_tokens=n_in, output_tokens=n_out)
    return TokenUsage(input_tokens=n_in, output_tokens=n_out, cache_write_tokens=n_in, cache_write_1h_tokens=n_in if kind == WRITES_1H else 0)


class UnitPrices:
    """Affine prices per (deployment, usage shape), read once from a `Catalog`."""

    def __init__(self, catalog: PriceCatalog) -> None:
        self.catalog = catalog
        self.enabled = type(catalog) is Catalog
        # (deployment, output > 0, kind) -> its prices; None: price it through the catalog
        self._affine: dict[tuple[str, bool, int], Affine | None] = {}
        # genai-prices' data in force: `get_snapshot()` is the custom snapshot when one
        # is set (UpdatePrices), else the bundled one, which never changes
        self._custom = data_snapshot._custom_snapshot

    def affine(self, dep: Deployment, kind: int, output: bool) -> Affine | None:
        """`dep`'s prices for usages of this kind (with output or without), or None: ask the catalog."""
        if data_snapshot._custom_snapshot is not self._custom:  # the data was replaced: read everything again
            self._affine = {}
            self._custom = data_snapshot._custom_snapshot
        key = (dep.name, output, kind)
        try:
            return self._affine[key]
        except KeyError:
            pass
        f = self._read(dep, kind, output) if self.enabled else None
        if f is not None and kind == PLAIN:
            f = f._replace(writes_never_dearer=self._writes_never_dearer(dep, output, f))
        self._affine[key] = f
        return f

    def cost(self, dep: Deployment, kind: int, n_in: int, n_out: int) -> Decimal | None:
        """The catalog's price of this usage on `dep`, or None: ask the catalog."""
        f = self.affine(dep, kind, n_out > 0)
        return None if f is None else f.base + f.per_input * n_in + f.per_output * n_out

    def _writes_never_dearer(self, dep: Deployment, output: bool, plain: Affine) -> bool:
        """Exact: both affine, compared on their slopes and at the smallest usage (n_in = 1, n_out = 1 or 0)."""
        o = 1 if output else 0
        at_least = plain.base + plain.per_input + plain.per_output * o
        for kind in (WRITES_5M, WRITES_1H):
            w = self.affine(dep, kind, output)
            if w is None or w.per_input > plain.per_input or w.per_output > plain.per_output:
                return False
            if w.base + w.per_input + w.per_output * o > at_least:
                return False
        return True

    def _read(self, dep: Deployment, kind: int, output: bool) -> Affine | None:
        catalog = self.catalog
        assert isinstance(catalog, Catalog)
        if not _affine_in_catalog(catalog, dep):
            return None
        o = 1 if output else 0
        probes = []
        for n_in, n_out in ((1, o), (2, o), (1, 2 * o)):
            priced = catalog.price(dep.catalog_provider, dep.model, usage(kind, n_in, n_out), dep.name)
            if priced.status != "priced":
                return None
            probes.append(priced.cost)
        one, more_in, more_out = probes
        per_input = more_in - one
        per_output = more_out - one if output else Decimal(0)
        return Affine(one - per_input - per_output * o, per_input, per_output)


def _affine_in_catalog(catalog: Catalog, dep: Deployment) -> bool:
    """Whether `Catalog.price` prices `dep` as a fixed affine function of its
    token counts: the config's per-token price, or a list price with one price
    whatever the date and no tiers. Mirrors the order of `Catalog.price`."""
    own = catalog._deployments.get(dep.name)  # what the catalog prices by that name
    if own is None or own.gpu_hour is not None:
        return False
    if own.price is not None:
        return True  # token_price_cost: Σ count × price / 10^6, exact
    if catalog._overrides:
        return False  # overrides may match, discount (rounded) or price by GPU hour: left to the catalog
    provider, model = own.catalog_provider, own.price_model or own.model
    found = _prices.resolve(provider, model)
    if found is None and provider is not None:
        found = _prices.resolve(None, model)
    if found is None:
        return False
    p, m, _ = found
    prices = m.prices
    if not isinstance(prices, ModelPrice) or _special(p, m):
        return False  # dated prices, or usage genai-prices rewrites
    return not any(isinstance(v, TieredPrices) for v in vars(prices).values())
