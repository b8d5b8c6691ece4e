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
  counts; the first candidate having no price means the call has none;
- a cascade (`call.route_steps`, cheapest step first) may run, and be billed
  for, every step: its worst case is the sum of each step's dearest candidate.

The input-token bound comes from `controls/tokens.py` (an upper bound for
every tokenizer); when it would refuse the call, the exact OpenAI count is
tried once before refusing.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from spendgate.config import Deployment
from spendgate.controls.tokens import count_input_tokens, estimate_input_tokens, forget_input_estimate
from spendgate.controls.unit_prices import PLAIN, WRITES_1H, WRITES_5M, UnitPrices, usage
from spendgate.pipeline import Call
from spendgate.pricing.catalog import PriceCatalog, TokenUsage

ZERO = Decimal(0)
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
        v = body.get(name)
        if v is None:
            continue
        if type(v) is not int:  # the rare shapes (bool, int subclasses, junk): the general test
            v = _int(v)
            if v is None:
                continue
        elif v <= 0:
            continue
        if found is None or v > found:
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
    n, best_of = body.get("n"), body.get("best_of")
    if n is None and best_of is None:
        return 1
    return max(_int(n) or 1, _int(best_of) or 1)


def worst_case(call: Call, catalog: PriceCatalog, prices: UnitPrices | None = None, stated: int | None = None) -> Decimal | None:
    """The most the call may cost at the catalog's price, or None when its model has no price.

    A cascade (`call.route_steps`) may run every step, and each step that runs
    is billed, so its worst case is the sum over the steps of each step's
    dearest candidate; a step whose first deployment has no price leaves the
    whole call without one. `prices` (the same catalog's `UnitPrices`) gives
    the same amounts sooner; `stated`, a positive `max_tokens(call)` the caller
    has at hand (`ensure_max_tokens` just made it `call.max_tokens`), saves
    reading the body again.
    """
    n_in = estimate_input_tokens(call)
    if n_in < 1:
        n_in = 1  # `input_tokens(call)`
    if call.endpoint == "embeddings":
        n_out = 0
    else:
        n_out = (stated or max_tokens(call) or 0) * choices(call)
    steps = call.route_steps
    if not steps:
        return _dearest(call, call.candidates, catalog, prices, n_in, n_out)
    total = ZERO
    for step in steps:
        cost = _dearest(call, step, catalog, prices, n_in, n_out)
        if cost is None:
            return None
        total += cost
    return total


def _dearest(call: Call, candidates: Sequence[Deployment], catalog: PriceCatalog, prices: UnitPrices | None, n_in: int, n_out: int) -> Decimal | None:
    """The dearest of `candidates` (failover order) for this usage; None when the
    first has no price (a later one without a price is recorded at 0 by the meter too)."""
    best: Decimal | None = None
    plain: TokenUsage | None = None
    marked: bool | None = None  # whether the body asks for prompt caching: looked for once, when it matters
    for i, dep in enumerate(candidates):
        f = prices.affine(dep, PLAIN, n_out > 0) if prices is not None else None
        if f is not None:
            cost = f.base + f.per_input * n_in + f.per_output * n_out
            if f.writes_never_dearer:  # cache writes, if the call may make any, cost no more
                if best is None or cost > best:
                    best = cost
                continue
        else:
            if plain is None:
                plain = usage(PLAIN, n_in, n_out)
            priced = catalog.price(dep.catalog_provider, dep.model, plain, dep.name)
            if priced.status != "priced":
                if i == 0:
                    return None
                continue
            cost = priced.cost
        if marked is None:
            marked = _marked(call.raw_body)
        kind = _cache_writes(call, dep, marked) if marked or dep.prompt_cache is not None else PLAIN
        if kind != PLAIN:
            dearer = prices.cost(dep, kind, n_in, n_out) if prices is not None else None
            if dearer is None:
                found = catalog.price(dep.catalog_provider, dep.model, usage(kind, n_in, n_out), dep.name)
                dearer = found.cost if found.status == "priced" else None
            if dearer is not None and dearer > cost:
                cost = dearer
        if best is None or cost > best:
            best = cost
    return best


def _marked(raw: bytes) -> bool:
    """`b'"cache_control"' in raw`, sooner: memchr finds the few `_` of a typical
    body (the mark's 7th byte) and each is checked in place; past 8 of them,
    the plain search from there."""
    find = raw.find
    i = find(b"_", 6)
    probes = 0
    while i != -1:
        if raw.startswith(_CACHE_CONTROL, i - 6):
            return True
        probes += 1
        if probes == 8:
            return find(_CACHE_CONTROL, i - 5) != -1  # a later mark's `_` comes after i
        i = find(b"_", i + 1)
    return False


def _cache_writes(call: Call, dep: Deployment, marked: bool) -> int:
    """The dearest prompt-cache usage the call may be billed on `dep` (`unit_prices.usage`):
    every input token written to the cache, at the one-hour price when a one-hour
    TTL may be asked for; PLAIN when it writes none."""
    settings = dep.prompt_cache
    inserted = settings is not None and settings.insert_breakpoints and dep.wire == "anthropic"
    if not (marked or inserted):
        return PLAIN
    one_hour = (marked and _ONE_HOUR in call.raw_body) or (settings is not None and inserted and settings.ttl == "1h")
    return WRITES_1H if one_hour else WRITES_5M
