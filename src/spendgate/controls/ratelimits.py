"""Rate limits: requests per minute, tokens per minute, requests in flight.

Every limit that covers a call is charged in one atomic `reserve`, so
concurrent calls can never overshoot a limit together, and a refused call
holds nothing. Per-minute limits use a sliding window made of 5-second
slots: a call is admitted when the current slot plus the twelve before it
fit under the limit. Those slots always contain the last 60 seconds, so no
60-second span ever holds more than the limit (no burst at minute
boundaries, as fixed windows allow); the price is that up to 5 s of older
traffic may still count. Tokens are reserved by estimate (input bound + the
most output the call may produce) and settled to the billed usage when the
call ends; a concurrency slot is freed then, however the call ended.

Calls tagged `priority=batch` may use only `batch_share` of each limit, so
interactive traffic keeps the rest as headroom.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from spendgate import housekeeping
from spendgate.controls.schema import RateLimit
from spendgate.controls.scope import Scope
from spendgate.controls.tokens import count_input_tokens, estimate_input_tokens
from spendgate.controls.worst_case import LEGACY_COMPLETIONS_DEFAULT, choices, max_tokens
from spendgate.errors import GatewayError
from spendgate.pipeline import Call
from spendgate.state.store import Charge, Checked, CounterStore, Refusal, in_process_ops, new_charge

log = logging.getLogger("spendgate.ratelimits")

SLOT_S = 5  # seconds per slot
WINDOW_SLOTS = 60 // SLOT_S  # slots per minute
CHECKED_SLOTS = WINDOW_SLOTS + 1  # the current slot and the twelve before it cover any 60 s span

RateLimitsFor = Callable[[Call], Sequence[RateLimit]]

_UNITS = {"rpm": "requests per minute", "tpm": "tokens per minute", "concurrency": "requests in flight"}


@dataclass(frozen=True, slots=True)
class _Rule:
    """One limit's counter for one scope instance, as the refusal explains it."""

    limit: RateLimit
    instance: str
    kind: str  # rpm | tpm | concurrency
    allowed: int  # the limit after batch share
    batch: bool


class RateLimitStage:
    """Stage: admit the call under every rate limit that covers it, or answer 429."""

    def __init__(
        self,
        limits: Sequence[RateLimit],
        store: CounterStore,
        rate_limits_for: RateLimitsFor | None = None,
        clock: Callable[[], float] = time.time,
        reservation_ttl_s: float = 900.0,
        default_max_tokens: int = 4096,
        expire_interval_s: float = 5.0,
    ) -> None:
        # per configured limit: its scope, and its compiled instances (by name) for [interactive, batch] calls
        self.limits: list[tuple[RateLimit, Scope, tuple[dict[str, _Compiled], dict[str, _Compiled]]]] = [
            (limit, Scope(limit.scope), ({}, {})) for limit in limits if _limits_something(limit)
        ]
        self.store = store
        self._reserve_now, self._settle_now = in_process_ops(store)  # the same operations, without a coroutine
        self.rate_limits_for = rate_limits_for
        self.clock = clock
        self.ttl_s = reservation_ttl_s
        self.default_max_tokens = default_max_tokens
        self._compiled: dict[tuple[int, str, bool], tuple[RateLimit, _Compiled]] = {}
        self._scopes: dict[int, tuple[RateLimit, Scope]] = {}  # scopes of the keys' own limits
        self.expire_interval_s = expire_interval_s
        self._housekeeping: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Drop slots that left every window (and stale reservations) in the background;
        without it the store keeps one bucket per instance per 5 s."""
        if self._housekeeping is None and (self.limits or self.rate_limits_for is not None):
            self._housekeeping = housekeeping.every(self.expire_interval_s, self._keep, "rate-limit", log)

    async def close(self) -> None:
        task, self._housekeeping = self._housekeeping, None
        await housekeeping.stop(task)

    async def _keep(self) -> None:
        released = await self.store.expire(self.clock())
        if released:
            log.warning("released %d rate-limit reservations past their TTL (%gs)", released, self.ttl_s)

    def _covering(self, call: Call, batch: bool) -> list[_Compiled]:
        found = []
        for limit, scope, compiled in self.limits:
            inst = scope.instance(call)
            if inst is not None:
                comp = compiled[batch].get(inst)
                found.append(comp if comp is not None else self._compile_config(limit, compiled[batch], inst, batch))
        if self.rate_limits_for is not None:
            for limit in self.rate_limits_for(call):
                if _limits_something(limit):
                    inst = self._scope(limit).instance(call)
                    if inst is not None:
                        found.append(self._compile(limit, inst, batch))
        return found

    @staticmethod
    def _compile_config(limit: RateLimit, compiled: dict[str, _Compiled], inst: str, batch: bool) -> _Compiled:
        """A configured limit's instance, remembered per limit (by instance name)."""
        if len(compiled) >= _Compiled.MAX:
            compiled.clear()  # many instances: start over (rebuilt on demand)
        comp = compiled[inst] = _Compiled(limit, inst, batch)
        return comp

    def _compile(self, limit: RateLimit, inst: str, batch: bool) -> _Compiled:
        key = (id(limit), inst, batch)
        hit = self._compiled.get(key)
        if hit is not None and hit[0] is limit:
            return hit[1]
        if len(self._compiled) >= _Compiled.MAX:
            self._compiled.clear()  # many instances: start over (rebuilt on demand)
        comp = _Compiled(limit, inst, batch)
        self._compiled[key] = (limit, comp)
        return comp

    def _scope(self, limit: RateLimit) -> Scope:
        hit = self._scopes.get(id(limit))
        if hit is not None and hit[0] is limit:
            return hit[1]
        if len(self._scopes) >= _Compiled.MAX:
            self._scopes.clear()
        scope = Scope(limit.scope)
        self._scopes[id(limit)] = (limit, scope)
        return scope

    async def __call__(self, call: Call) -> None:
        batch = call.tags.get("priority") == "batch"
        covering = self._covering(call, batch)
        if not covering:
            return
        now = self.clock()
        tokens = 0
        for comp in covering:
            if comp.has_tpm:
                tokens = estimate_input_tokens(call) + self._output_tokens(call)
                break
        charges, settle, tpm_counters = _charges(covering, now, tokens)
        rid = call.request_id + "/rl"  # `<request_id>/<holder>`: the durable store maps it back to the call
        reserve_now = self._reserve_now
        refusal = reserve_now(rid, charges, now, self.ttl_s) if reserve_now is not None else await self.store.reserve(rid, charges, now, self.ttl_s)
        if refusal is not None and _rule_of(refusal, charges, covering).kind == "tpm":
            exact = count_input_tokens(call) + self._output_tokens(call)
            if exact < tokens:  # the byte bound decided it: try again with the real count
                tokens = exact
                charges, settle, tpm_counters = _charges(covering, now, tokens)
                refusal = await self.store.reserve(rid, charges, now, self.ttl_s)
        if refusal is not None:
            raise await self._refuse(call, refusal, _rule_of(refusal, charges, covering), now)
        # at finish: requests stay counted, tokens settle to what was billed, slots are freed
        call.on_finish(self._finisher(rid, settle, tpm_counters))

    def _finisher(self, rid: str, settle: dict[str, int], tpm_counters: list[str]) -> Callable[[Call], Awaitable[None]]:
        store, clock = self.store, self.clock
        sync = self._settle_now
        if sync is not None:
            settle_now = sync[0]

            async def finish_in_process(call: Call) -> None:
                if tpm_counters:
                    used = call.input_tokens + call.output_tokens
                    for counter in tpm_counters:
                        settle[counter] = used
                settle_now(rid, settle, clock())

            return finish_in_process

        async def finish(call: Call) -> None:
            if tpm_counters:
                used = call.input_tokens + call.output_tokens
                for counter in tpm_counters:
                    settle[counter] = used
            await store.settle(rid, settle, clock())

        return finish

    def _output_tokens(self, call: Call) -> int:
        """The most output the call may be billed for: its stated bound (or the default the
        budget stage will state for it) times the choices it asks for."""
        if call.endpoint == "embeddings":
            return 0
        bound = call.max_tokens or max_tokens(call)
        if bound is None:
            bound = LEGACY_COMPLETIONS_DEFAULT if call.endpoint == "completions" else self.default_max_tokens
        return bound * choices(call)

    async def _refuse(self, call: Call, refusal: Refusal, rule: _Rule, now: float) -> GatewayError:
        charge = refusal.charge
        used = int(refusal.used)
        remaining = max(0, rule.allowed - used)
        wait = await self._wait_s(charge, rule, used, now)
        unit = _UNITS[rule.kind]
        share = f" (batch calls may use {_percent(rule.limit.batch_share)} of its {_limit_value(rule)})" if rule.batch else ""
        head = f"Rate limit '{rule.limit.name}' ({rule.instance}): {rule.allowed} {unit}{share}"
        if wait is None and rule.kind == "tpm":
            message = (
                f"{head}. This request alone needs up to {charge.amount} tokens, more than the limit allows; "
                "lower max_tokens or shorten the input."
            )
        elif wait is None:  # a limit of 0: a batch share that rounds down to nothing
            message = f"{head}, so it admits no such calls."
        elif rule.kind == "concurrency":
            message = f"{head}; {used} are in flight. Try again in {wait} s."
        elif rule.kind == "tpm":
            message = (
                f"{head}; {used} used or reserved in the last minute, this request needs up to {charge.amount}. "
                f"Try again in {wait} s."
            )
        else:
            message = f"{head}; {used} made in the last minute. Try again in {wait} s."
        headers = [
            (b"x-spendgate-ratelimit-name", rule.limit.name.encode()),
            (b"x-spendgate-ratelimit-limit", str(rule.allowed).encode()),
            (b"x-spendgate-ratelimit-remaining", str(remaining).encode()),
        ]
        if wait is not None:
            headers += [(b"retry-after", str(wait).encode()), (b"x-spendgate-ratelimit-reset", str(wait).encode())]
        call.response_headers.extend(headers)
        call.control_actions.append(f"ratelimit:{rule.limit.name}:{rule.kind} refused")
        return GatewayError(429, message, "rate_limit")

    async def _wait_s(self, charge: Charge, rule: _Rule, used: int, now: float) -> int | None:
        """Whole seconds until the call would fit, if nothing else arrives; None: never."""
        if int(charge.amount) > rule.allowed:
            return None
        if rule.kind == "concurrency":
            return 1
        # slots leave the window oldest first: find how many must go before the call fits
        slot = int(now // SLOT_S)
        freed = 0
        for j, bucket in enumerate(charge.checked):
            usage = await self.store.usage([bucket])
            freed += int(usage.settled) + int(usage.reserved)
            if used - freed + int(charge.amount) <= rule.allowed:
                return max(1, math.ceil((slot + 1 + j) * SLOT_S - now))
        return max(1, math.ceil((slot + CHECKED_SLOTS) * SLOT_S - now))  # only in-flight reservations remain


class _Compiled:
    """One limit for one scope instance (batch calls or not), built once: its
    rules, its refusal label, and what its charges look like in the current slot.

    The names of an instance's current slot and of its window (the slots
    checked) change once per slot (5 s), not per call, so they are built once
    per slot and reused instead of formatting 13 names per limit on every call.
    """

    MAX = 100_000  # instances remembered; beyond, start over (rebuilt on demand)

    __slots__ = ("label", "has_tpm", "rules", "_parts", "_slot", "_plan")

    def __init__(self, limit: RateLimit, inst: str, batch: bool) -> None:
        base = f"rl:{limit.name}:{inst}:"
        self.label = f"rate limit {limit.name} ({inst})"
        parts = []
        for kind, value in (("rpm", limit.rpm), ("tpm", limit.tpm), ("concurrency", limit.concurrency)):
            if value is None:
                continue
            allowed = _share(value, limit.batch_share) if batch else value
            parts.append((kind, allowed, _Rule(limit, inst, kind, allowed, batch), base + ("inflight" if kind == "concurrency" else kind)))
        self._parts = tuple(parts)
        self.rules = tuple(rule for _, _, rule, _ in parts)  # in the order of the charges
        self.has_tpm = limit.tpm is not None
        self._slot: int | None = None
        self._plan: _Plan | None = None

    def at(self, slot: int) -> _Plan:
        """This limit's charges in `slot`, as `_charges` builds them."""
        plan = self._plan
        if plan is None or slot != self._slot:
            plan = self._plan = _Plan(self._parts, slot, self.label)
            self._slot = slot
        return plan


RPM, TPM, CONCURRENCY = 0, 1, 2


class _Plan:
    """One compiled limit's charges in one slot. A request's charge is the same
    for every call of the slot (amount 1), so it is built once; a tpm charge
    carries the call's tokens and a concurrency charge its time, so only their
    other fields are kept. `settle`: what each counter settles to unless the
    call's usage says otherwise (a request stays counted, a slot is freed)."""

    __slots__ = ("steps", "settle", "tpm")

    def __init__(self, parts: tuple[tuple[str, int, _Rule, str], ...], slot: int, label: str) -> None:
        window_end = float((slot + 1) * SLOT_S)
        expires = window_end + WINDOW_SLOTS * SLOT_S  # once the slot has left every window
        steps: list[tuple[int, str, Any]] = []
        settle: dict[str, int] = {}
        tpm: list[str] = []
        for kind, allowed, _rule, name in parts:
            if kind == "concurrency":
                steps.append((CONCURRENCY, name, (allowed, label)))
                settle[name] = 0
                continue
            check = Checked(f"{name}:{s}" for s in range(slot - WINDOW_SLOTS, slot + 1))
            counter = check[-1]
            if kind == "rpm":
                steps.append((RPM, counter, new_charge((counter, 1, allowed, check, expires, window_end, label))))
                settle[counter] = 1
            else:
                steps.append((TPM, counter, (allowed, check, expires, window_end, label)))
                settle[counter] = 0  # the call's tokens
                tpm.append(counter)
        self.steps = tuple(steps)
        self.settle = settle
        self.tpm = tuple(tpm)


def _charges(covering: list[_Compiled], now: float, tokens: int) -> tuple[tuple[Charge, ...], dict[str, int], list[str]]:
    """The charges of one call (covering limits in order, each its rpm, tpm,
    concurrency), what each settles to unless the call's usage says otherwise,
    and its tpm counters (settled to usage)."""
    slot = int(now // SLOT_S)
    charges: list[Charge] = []
    settle: dict[str, int] = {}
    tpm: list[str] = []
    for comp in covering:
        plan = comp.at(slot)
        settle.update(plan.settle)
        tpm.extend(plan.tpm)
        for code, counter, data in plan.steps:
            if code == RPM:
                charges.append(data)
            elif code == TPM:
                charges.append(new_charge((counter, tokens, *data)))
                settle[counter] = tokens
            else:
                allowed, label = data
                charges.append(new_charge((counter, 1, allowed, (), 0.0, now + 1, label)))
    return tuple(charges), settle, tpm


def _rule_of(refusal: Refusal, charges: Sequence[Charge], covering: list[_Compiled]) -> _Rule:
    """The rule of the refused charge (the charges were built from `covering`, in order)."""
    rules = [rule for comp in covering for rule in comp.rules]
    for charge, rule in zip(charges, rules):
        if charge is refusal.charge or charge.counter == refusal.charge.counter:
            return rule
    raise LookupError(f"refusal for a counter this call did not charge: {refusal.charge.counter}")


def _limits_something(limit: RateLimit) -> bool:
    return limit.rpm is not None or limit.tpm is not None or limit.concurrency is not None


def _share(value: int, share: Decimal) -> int:
    return int(value * share) if share < 1 else value


def _percent(share: Decimal) -> str:
    return f"{(share * 100).normalize():f}%"


def _limit_value(rule: _Rule) -> int:
    value = {"rpm": rule.limit.rpm, "tpm": rule.limit.tpm, "concurrency": rule.limit.concurrency}[rule.kind]
    return int(value or 0)
