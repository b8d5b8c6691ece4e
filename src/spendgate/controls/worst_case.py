"""The most a call can cost, so a budget can reserve it before the call runs.

worst case = price(input-token estimate, max output tokens × choices) at the
catalog's price for the deployments that may serve the call. "Most" has to
be true for the reservation to be a cap, hence:

- a request with no max_tokens gets one set (`controls.default_max_tokens`;
  legacy /completions get OpenAI's implicit default of 16), so the output
  bound is stated to the provider, not assumed;
- `n` / `best_of` multiply the output (each choice is billed);
- a request with Anthropic `cache_control` blocks may write its whole prompt
  to the cache, billed above the input price: the dearer of the two counts;
- every candidate deployment (failover order) is priced and the dearest one
  counts; the first candidate having no price means the call has none.

The input-token bound comes from `controls/tokens.py` (an upper bound for
every tokenizer); when it would refuse the call, the exact OpenAI count is
tried once before refusing.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from spendgate.config import Deployment
from spendgate.controls.tokens import count_input_tokens, estimate_input_tokens, forget_input_estimate
from spendgate.pipeline import Call
from spendgate.pricing.catalog import PriceCatalog, TokenUsage

LEGACY_COMPLETIONS_DEFAULT = 16  # what OpenAI's /completions generates when max_tokens is absent
_CACHE_CONTROL = b'"cache_control"'
_ONE_HOUR = b'"1h"'

# endpoint -> the request fields that bound the output, in the order they are honoured
_FIELDS: dict[str, tuple[str, ...]] = {
    "chat.completions": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "messages": ("max_tokens",),
    "embeddings": (),
}


def input_tokens(call: Call) -> int:
    """The call's input-token bound (`controls/tokens.py` keeps it on the call, shared with rate limits)."""
    return max(1, estimate_input_tokens(call))


def tighten_input(call: Call) -> bool:
    """Replace the cheap bound by the tokenizer's count where one applies
    (costly: only when the bound would refuse the call). True if it shrank."""
    before = call.input_tokens_estimate
    return count_input_tokens(call) < before


def model_changed(call: Call) -> None:
    """The model (so the candidates) changed: the input bound must be computed again."""
    forget_input_estimate(call)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def max_tokens(call: Call) -> int | None:
    """The output bound the request states (the largest, if it states two); None: none."""
    body = call.body
    found = None
    for name in _FIELDS.get(call.endpoint, ()):
        v = _int(body.get(name))
        if v is not None and (found is None or v > found):
            found = v
    return found


def _field_to_set(call: Call) -> str:
    if call.endpoint != "chat.completions":
        return "max_tokens"
    # OpenAI reasoning models refuse `max_tokens` (same rule as relay/prepare.py)
    for dep in call.candidates:
        if getattr(dep, "wire", "openai") == "openai" and str(getattr(dep, "model", "")).startswith(("o1", "o3", "o4", "gpt-5")):
            return "max_completion_tokens"
    return "max_tokens"


def ensure_max_tokens(call: Call, default: int) -> int | None:
    """Make the output bound explicit; returns the value set, or None when the
    request had one (or the endpoint has no output)."""
    if call.endpoint == "embeddings":
        return None
    found = max_tokens(call)
    if found is not None:
        call.max_tokens = found
        return None
    value = LEGACY_COMPLETIONS_DEFAULT if call.endpoint == "completions" else default
    call.set_field(_field_to_set(call), value)
    call.max_tokens = value
    return value


def lower_max_tokens(call: Call, cap: int) -> int | None:
    """Lower every output-bound field above `cap` to `cap`; returns the old bound, or None if nothing changed."""
    before = max_tokens(call)
    if before is None:
        if call.endpoint == "embeddings":
            return None
        call.set_field(_field_to_set(call), cap)
        call.max_tokens = cap
        return 0
    if before <= cap:
        return None
    body = call.body
    for name in _FIELDS[call.endpoint]:
        v = _int(body.get(name))
        if v is not None and v > cap:
            call.set_field(name, cap)
    call.max_tokens = cap
    return before


def choices(call: Call) -> int:
    """How many completions the call is billed for (OpenAI `n`, `best_of`)."""
    if call.wire != "openai":
        return 1
    body = call.body
    return max(_int(body.get("n")) or 1, _int(body.get("best_of")) or 1)


def worst_case(call: Call, catalog: PriceCatalog) -> Decimal | None:
    """The most the call may cost at the catalog's price, or None when its model has no price."""
    n_in = input_tokens(call)
    n_out = 0 if call.endpoint == "embeddings" else (max_tokens(call) or 0) * choices(call)
    plain = TokenUsage(input_tokens=n_in, output_tokens=n_out)
    marked = _CACHE_CONTROL in call.raw_body
    best: Decimal | None = None
    for i, dep in enumerate(call.candidates):
        writes = _cache_writes(call, dep, n_in, n_out, marked)
        priced = catalog.price(dep.catalog_provider, dep.model, plain, dep.name)
        if priced.status != "priced":
            if i == 0:
                return None
            continue  # a failover target with no price is recorded at 0 by the meter too
        cost = priced.cost
        if writes is not None:
            dearer = catalog.price(dep.catalog_provider, dep.model, writes, dep.name)
            if dearer.status == "priced" and dearer.cost > cost:
                cost = dearer.cost
        if best is None or cost > best:
            best = cost
    return best


def _cache_writes(call: Call, dep: Deployment, n_in: int, n_out: int, marked: bool) -> TokenUsage | None:
    """The dearest prompt-cache usage the call may be billed on `dep`: every input token
    written to the cache, at the one-hour price when a one-hour TTL may be asked for."""
    settings = dep.prompt_cache
    inserted = settings is not None and settings.insert_breakpoints and dep.wire == "anthropic"
    if not (marked or inserted):
        return None
    one_hour = (marked and _ONE_HOUR in call.raw_body) or (settings is not None and inserted and settings.ttl == "1h")
    return TokenUsage(
        input_tokens=n_in, output_tokens=n_out, cache_write_tokens=n_in, cache_write_1h_tokens=n_in if one_hour else 0
    )
