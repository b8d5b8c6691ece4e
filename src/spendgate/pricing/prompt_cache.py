"""What a provider's prompt cache saved on one call.

`saved` = the same call priced with every prompt token as plain input, minus
what it cost. Reads make it positive; a call that only writes the cache pays
the write premium (1.25x or 2x the input price at Anthropic) and its `saved`
is negative. Both are kept as they are, so the sum of `saved` over any set of
calls is exactly what prompt caching gained (or lost) on them.
"""

from __future__ import annotations

from decimal import Decimal

from spendgate.pricing.catalog import PriceCatalog, TokenUsage

SAVED_BY = "prompt_cache"


def uses_prompt_cache(u: TokenUsage) -> bool:
    return bool(u.cache_read_tokens or u.cache_write_tokens)


def prompt_cache_saved(
    catalog: PriceCatalog, provider: str | None, model: str, u: TokenUsage, cost: Decimal, deployment: str | None = None
) -> Decimal | None:
    """Cost without caching minus `cost`, at the same price source; None if that can't be priced."""
    uncached = TokenUsage(input_tokens=u.input_tokens, output_tokens=u.output_tokens, reasoning_tokens=u.reasoning_tokens)
    without = catalog.price(provider, model, uncached, deployment)
    if without.status != "priced":
        return None
    return without.cost - cost
