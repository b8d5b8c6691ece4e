"""Budget stage: reserve a call's worst-case cost on every budget that covers
it before the call runs, all or nothing, and settle to the real cost after.

"A cost cap that is checked after the fact is a warning light, not a cap."
So a call is admitted only if its worst case fits in every covering budget,
counting what other in-flight calls have reserved; with one atomic
`reserve` over all budgets, concurrent calls can never overshoot together,
and nothing is ever admitted with a smaller reservation than its worst case.
When the call ends (however it ends), a finisher settles every budget to
`call.cost`, or releases the reservation when nothing was spent.

Per call, for each covering budget (config budgets, and those the call's key
brings): the instance (`controls/scope.py`), the window's counters
(`controls/windows.py`), the effective limit (baseline + active burst
grants, `controls/grants.py`), the slowdown steps reached
(`controls/slowdown.py`); then the worst case (`controls/worst_case.py`)
and the reservation. Settled spend is rebuilt from the ledger at start-up
(`controls/rebuild.py`); open reservations survive restarts in the durable
store (`state/durable.py`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_UP, Context, Decimal
from functools import partial
from typing import Any, NamedTuple, Protocol, cast
from zoneinfo import ZoneInfo

from spendgate import housekeeping
from spendgate.config import Config
from spendgate.controls import worst_case as wc
from spendgate.controls.grants import BurstGrants, GrantStore
from spendgate.controls.rebuild import ledger_spend
from spendgate.controls.schema import Budget, SlowdownStep
from spendgate.controls.scope import ANY, Scope, instance_name
from spendgate.controls.slowdown import HUNDRED, Decision, decide, in_force, label
from spendgate.controls.unit_prices import UnitPrices
from spendgate.controls.windows import Placement, RollingClock, iso_in, window_clock
from spendgate.errors import GatewayError
from spendgate.ledger.store import LedgerStore
from spendgate.pipeline import Call
from spendgate.pricing.catalog import PriceCatalog
from spendgate.routing.router import RouteStage
from spendgate.state.store import Charge, CounterStore, in_process_ops, new_charge

log = logging.getLogger("spendgate.budgets")

ZERO = Decimal(0)
MICRO = Decimal("0.000001")
HEADER_PLACES = Decimal("0.000001")
# `d.quantize(places, rounding=ROUND_DOWN)` in the default context, without building
# a context per call (spendgate never changes the thread's decimal context)
_quantize_down = Context(rounding=ROUND_DOWN).quantize
UTC = ZoneInfo("UTC")


class KeyBudgets(Protocol):
    """The budgets a call's key brings with it (managed keys' own budgets).

    Implemented by `keys.controls.KeyBudgets`. Return the same `Budget`
    objects while a key is unchanged: they are compiled once per object.
    """

    def budgets_for(self, call: Call) -> list[Budget]: ...


class _Instance:
    """One budget instance (e.g. team=search) as the stage caches it."""

    __slots__ = ("name", "label", "placement", "notified")

    def __init__(self, name: str, budget: str) -> None:
        self.name = name
        self.label = f"budget '{budget}'" + ("" if name == "global" else f" ({name})")
        self.placement: Placement | None = None
        self.notified = -1.0  # window start of the last notify log


class CompiledBudget:
    """A `Budget` made cheap to evaluate per call: scope compiled, window clock
    built, counter prefixes and placements cached per instance."""

    __slots__ = ("budget", "name", "name_b", "limit", "scope", "dims", "clock", "steps", "first_step", "allow_unpriced", "signature", "fixed", "instances", "_prefix")

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.name = budget.name
        self.name_b = budget.name.encode()  # for the x-spendgate-budget-name header
        self.limit = budget.limit
        self.scope = Scope(budget.scope)
        self.dims = sorted(budget.scope.items())
        self.clock = window_clock(budget.window)
        self.steps: tuple[SlowdownStep, ...] = tuple(budget.slowdown)
        # the lowest step's `at × limit` (baseline limit): a call below it needs no `decide`
        self.first_step = self.steps[0].at * self.limit if self.steps else None
        self.allow_unpriced = budget.on_missing_price == "allow"
        self.signature = signature(budget)
        self.fixed = None if any(v == ANY for v in budget.scope.values()) else instance_name(budget.scope)
        self.instances: dict[str, _Instance] = {}
        self._prefix = f"budget|{self.name}|{self.clock.spec}|"

    def prefix(self, instance: str) -> str:
        return self._prefix + instance

    def instance(self, name: str) -> _Instance:
        found = self.instances.get(name)
        if found is None:
            found = self.instances[name] = _Instance(name, self.name)
        return found

    def place(self, inst: _Instance, now: float) -> Placement:
        p = inst.placement
        if p is None or not (p.valid_from <= now < p.valid_until):
            p = inst.placement = self.clock.place(self._prefix + inst.name, now)
        return p


def signature(b: Budget) -> str:
    """What identifies a budget's counters and spend (not its limit or steps)."""
    w = b.window
    return f"{b.name}|{w.period or w.rolling}|{w.timezone}|{sorted(b.scope.items())}"


class _State(NamedTuple):
    """One covering budget instance during one call (built with `_new_state`)."""

    cb: CompiledBudget
    inst: _Instance
    p: Placement
    limit: Decimal
    used: Any  # settled + reserved before this call (Decimal, or int 0)


# `_State(cb, inst, p, limit, used)` without a named tuple's Python-level __new__ (one per budget per call)
_new_state = cast(Callable[[tuple[CompiledBudget, _Instance, Placement, Decimal, Any]], _State], partial(tuple.__new__, _State))


class BudgetStage:
    """The budget control stage; also the admin API's `BudgetAdmin`."""

    def __init__(
        self,
        config: Config,
        catalog: PriceCatalog,
        store: CounterStore,
        route: RouteStage,
        grants: GrantStore | None = None,
        key_budgets: KeyBudgets | None = None,
        *,
        clock: Callable[[], float] = time.time,
        expire_interval_s: float = 2.0,
    ) -> None:
        self.catalog = catalog
        self.prices = UnitPrices(catalog)  # the catalog's worst-case prices, per-call work cut (exact)
        self.store = store
        # an in-process store (memory, durable) reads usage without a coroutine
        self._used_now: Callable[[tuple[str, ...]], Any] | None = getattr(store, "used_now", None)
        # ... and, for the stores of this package (not subclasses, which may wrap
        # the async contract), reserves and settles without a coroutine
        self._reserve_now, self._settle_now = in_process_ops(store)
        self.route = route
        self.keys = key_budgets
        self.clock = clock
        self.ttl_s = config.state.reservation_ttl_s
        self.default_max_tokens = config.controls.default_max_tokens
        self.reject_missing_price = config.controls.reject_missing_price
        self.expire_interval_s = expire_interval_s
        self.grants = BurstGrants(grants)
        self.budgets = [CompiledBudget(b) for b in config.budgets]
        self._by_name = {cb.name: cb for cb in self.budgets}
        self._key_budgets: dict[str, CompiledBudget] = {}
        # public model name per deployment serving exactly one (ledger rebuild of `model` scopes)
        self._served = {d.name: d.serves[0] for d in config.deployments if len(d.serves) == 1}
        self._ledger: LedgerStore | None = None
        self._seeded: set[str] = set()
        self._seeding: dict[str, asyncio.Future[None]] = {}
        self._housekeeping: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, ledger: LedgerStore | None) -> None:
        """Before serving: grants from the state file, settled spend from the
        ledger, open reservations from the durable store; then housekeeping."""
        now = self.clock()
        await asyncio.to_thread(self.grants.load, now)
        self._ledger = ledger
        recovery = None
        recover = getattr(self.store, "recover", None)
        if recover is not None:
            recovery = await asyncio.to_thread(recover, ledger, now)
        seeds = await asyncio.to_thread(ledger_spend, self.budgets, ledger, now, self._served) if ledger is not None else []
        totals: dict[str, tuple[Any, float]] = {}
        for s in seeds:
            s.budget.instance(s.instance)  # known instance: listed by budget_status
            totals[s.counter] = (s.settled, s.expires_at)
        if recovery is not None:
            self.store.reopen(recovery)  # type: ignore[attr-defined]
        for counter, (amount, expires_at) in totals.items():
            await self.store.seed(counter, amount, expires_at)
        self._seeded.update(cb.signature for cb in self.budgets)
        if seeds:
            log.info("budgets: settled spend rebuilt from the ledger for %d counters", len(totals))
        self._housekeeping = housekeeping.every(self.expire_interval_s, self._keep, "budget", log)

    async def close(self) -> None:
        """Stop housekeeping (the store is closed by its owner)."""
        task, self._housekeeping = self._housekeeping, None
        await housekeeping.stop(task)

    async def _keep(self) -> None:
        now = self.clock()
        released = await self.store.expire(now)
        if released:
            log.warning("released %d reservations past their TTL (%gs)", released, self.ttl_s)
        self.grants.prune(now)

    # ---- the stage -------------------------------------------------------------------------

    def _covering(self, call: Call) -> list[tuple[CompiledBudget, str]]:
        out = []
        for cb in self.budgets:
            inst = cb.scope.instance(call)
            if inst is not None:
                out.append((cb, inst))
        if self.keys is not None:
            for b in self.keys.budgets_for(call):
                cb = self._compiled_key_budget(b)
                inst = cb.scope.instance(call)
                if inst is not None:
                    out.append((cb, inst))
        return out

    def _compiled_key_budget(self, b: Budget) -> CompiledBudget:
        cb = self._key_budgets.get(b.name)
        if cb is not None and cb.budget is b:
            return cb
        if cb is not None and cb.signature == signature(b):
            fresh = CompiledBudget(b)  # new limit or steps; same counters: keep the instances
            fresh.instances = cb.instances
            cb = fresh
        else:
            if cb is not None:  # other counters: rebuild them from the ledger if this budget comes back
                self._seeded.discard(cb.signature)
            cb = CompiledBudget(b)
        self._key_budgets[b.name] = cb
        return cb

    async def __call__(self, call: Call) -> None:
        if not call.candidates:  # the route stage normally ran first (scopes may name the deployment)
            self.route.reroute(call)
        covering = self._covering(call)
        if not covering:
            return
        now = self.clock()
        if self._ledger is not None:
            seeded = self._seeded
            for cb, _ in covering:
                if cb.signature not in seeded:
                    await self._seed_late(cb, now)
        set_to = wc.ensure_max_tokens(call, self.default_max_tokens)
        if set_to is not None:
            call.control_actions.append(f"default_max_tokens:{set_to}")
        used_now = self._used_now
        if used_now is not None:  # an in-process store: no coroutine unless a step reroutes the call
            model = call.model
            states = self._states_now(call, covering, now, used_now)
            if call.model != model:
                states = await self._rerouted(call, states, now)
        else:
            states = await self._slowdown(call, covering, now)
        amount = wc.worst_case(call, self.catalog, self.prices, _stated(call))
        if amount is None:
            amount = self._unpriced(call, states)
        charges = _charges(states, amount)
        reserve_now = self._reserve_now
        rid = call.request_id
        refusal = reserve_now(rid, charges, now, self.ttl_s) if reserve_now is not None else await self.store.reserve(rid, charges, now, self.ttl_s)
        if refusal is not None and amount and wc.tighten_input(call):
            # the cheap input bound decided it: try once more with the tokenizer's count
            tighter = wc.worst_case(call, self.catalog, self.prices, _stated(call))
            if tighter is not None and tighter < amount:
                amount = tighter
                charges = _charges(states, amount)
                refusal = await self.store.reserve(rid, charges, now, self.ttl_s)
        if refusal is not None:
            st = next(s for s in states if s.p.counter == refusal.charge.counter)
            if isinstance(st.cb.clock, RollingClock):
                st = st._replace(p=await self._rolling_room(st, refusal.used, amount, now))
            self._refuse(call, st, refusal.used, amount, now)
        call.on_finish(self._finisher(charges))
        tight = states[0]
        room = tight.limit - tight.used
        for i in range(1, len(states)):  # the first budget with the least room (as min() picks it)
            st = states[i]
            r = st.limit - st.used
            if r < room:
                tight, room = st, r
        h = call.response_headers
        h.append((b"x-spendgate-budget-name", tight.cb.name_b))
        h.append((b"x-spendgate-budget-remaining", _header_money(room - amount)))

    def _finisher(self, charges: tuple[Charge, ...]) -> Callable[[Call], Awaitable[None]]:
        """Settle every budget to the call's cost when it ends (release: nothing spent).
        With an in-process store, without a coroutine per store operation."""
        store, clock = self.store, self.clock
        counters = []
        for c in charges:
            counters.append(c.counter)
        sync = self._settle_now
        if sync is not None:
            settle_now, release_now = sync

            async def settle_in_process(call: Call) -> None:
                cost = call.cost
                if cost:
                    settle_now(call.request_id, dict.fromkeys(counters, cost), clock())
                else:
                    release_now(call.request_id)

            return settle_in_process

        async def settle(call: Call) -> None:
            cost = call.cost
            if cost:
                await store.settle(call.request_id, dict.fromkeys(counters, cost), clock())
            else:
                await store.release(call.request_id)

        return settle

    async def _state(self, cb: CompiledBudget, inst_name: str, now: float) -> _State:
        if self._used_now is not None:
            return self._state_now(cb, inst_name, now, self._used_now)
        inst = cb.instance(inst_name)
        p = cb.place(inst, now)
        extra = self.grants.extra(cb.name, inst_name, now)
        u = await self.store.usage(p.check)
        return _new_state((cb, inst, p, cb.limit + extra if extra else cb.limit, u.settled + u.reserved))

    def _state_now(self, cb: CompiledBudget, inst_name: str, now: float, used_now: Callable[[tuple[str, ...]], Any]) -> _State:
        """`_state` for a store in this process: its usage read without a coroutine."""
        inst = cb.instance(inst_name)
        p = cb.place(inst, now)
        extra = self.grants.extra(cb.name, inst_name, now)
        return _new_state((cb, inst, p, cb.limit + extra if extra else cb.limit, used_now(p.check)))

    def _states_now(self, call: Call, covering: list[tuple[CompiledBudget, str]], now: float, used_now: Callable[[tuple[str, ...]], Any]) -> list[_State]:
        """Each covering budget's state read from an in-process store, its slowdown
        steps decided and applied (the first pass of `_slowdown`, without a coroutine)."""
        grants = self.grants
        bursts = grants.any
        states = []
        for cb, name in covering:
            inst = cb.instances.get(name)
            if inst is None:
                inst = cb.instance(name)
            p = inst.placement
            if p is None or not (p.valid_from <= now < p.valid_until):
                p = cb.place(inst, now)
            more = grants.extra(cb.name, name, now) if bursts else None
            states.append(_new_state((cb, inst, p, cb.limit + more if more else cb.limit, used_now(p.check))))
        for st in states:  # every state read before any step acts (a refusal leaves them all known)
            cb = st.cb
            if cb.steps:
                first = cb.first_step if st.limit is cb.limit else cb.steps[0].at * st.limit  # (bursts raise the limit)
                if st.used * HUNDRED >= first:  # the lowest step is reached (`decide` checks that too)
                    d = decide(cb.steps, st.used, st.limit, call)
                    if d is not None:
                        self._apply(call, st, d, now)
        return states

    async def _slowdown(self, call: Call, covering: list[tuple[CompiledBudget, str]], now: float) -> list[_State]:
        """Evaluate every covering budget's steps. A `route` changes the model,
        which may change which budgets cover the call: then evaluate again
        (bounded), each budget instance once."""
        used_now = self._used_now
        model = call.model
        if used_now is not None:
            states = self._states_now(call, covering, now, used_now)
        else:
            states = [await self._state(cb, inst, now) for cb, inst in covering]
            for st in states:
                if st.cb.steps:
                    d = decide(st.cb.steps, st.used, st.limit, call)
                    if d is not None:
                        self._apply(call, st, d, now)
        if call.model == model:
            return states
        return await self._rerouted(call, states, now)

    async def _rerouted(self, call: Call, states: list[_State], now: float) -> list[_State]:
        """A step routed the call to another model: the budgets covering it now,
        each new one's steps evaluated (again at most twice), each instance once."""
        seen = {(id(st.cb), st.inst.name): st for st in states}
        for _ in range(2):
            model = call.model
            covering = self._covering(call)
            for cb, inst in covering:
                if (id(cb), inst) not in seen:
                    st = seen[(id(cb), inst)] = await self._state(cb, inst, now)
                    if cb.steps:
                        d = decide(cb.steps, st.used, st.limit, call)
                        if d is not None:
                            self._apply(call, st, d, now)
            if call.model == model:
                break
        covering = self._covering(call)
        out = []
        for cb, inst in covering:
            st = seen.get((id(cb), inst))
            out.append(st if st is not None else await self._state(cb, inst, now))
        return out

    def _apply(self, call: Call, st: _State, d: Decision, now: float) -> None:
        name = st.cb.name
        if d.refuse is not None:
            step = d.refuse
            tag = label(name, step.at)
            call.response_headers.append((b"x-spendgate-degraded", f"{tag};{step.action}".encode()))
            what = "batch calls are paused" if step.action == "refuse_batch" else "calls are refused"
            pct = _percent(st.used, st.limit)
            self._budget_headers(call, st, st.used, now)
            raise GatewayError(
                429,
                f"{_cap(st.inst.label)} is {pct}% used ({_usd(st.used)} of {_usd(st.limit)}): {what} until "
                f"{st.p.reset_iso} (slowdown step at {step.at.normalize():f}%).",
                "rate_limit",
            )
        if d.route is not None:
            step, target = d.route
            old = call.model
            call.model = target
            try:
                self.route.reroute(call)
            except GatewayError as err:
                call.model = old
                self.route.reroute(call)
                log.warning("slowdown of budget %s: cannot route %s to %s (%s); left as is", name, old, target, err.message)
            else:
                wc.model_changed(call)
                call.route_reason = "degrade"
                tag = label(name, step.at)
                call.control_actions.append(f"degrade:{tag}:route {old}->{target}")
                call.response_headers.append((b"x-spendgate-degraded", f"{tag};route".encode()))
        if d.cap is not None and d.cap.max_tokens is not None:
            step = d.cap
            before = wc.lower_max_tokens(call, step.max_tokens)  # type: ignore[arg-type]
            if before is not None:
                tag = label(name, step.at)
                call.control_actions.append(f"degrade:{tag}:cap_max_tokens {before}->{step.max_tokens}")
                call.response_headers.append((b"x-spendgate-degraded", f"{tag};cap_max_tokens".encode()))
        if d.notify is not None:
            tag = label(name, d.notify.at)
            call.control_actions.append(f"notify:{tag}")
            call.response_headers.append((b"x-spendgate-budget-warning", tag.encode()))
            window = st.p.window_start if not isinstance(st.cb.clock, RollingClock) else _rolling_window_no(st.cb.clock, now)
            if st.inst.notified != window:
                st.inst.notified = window
                log.warning("%s is %s%% used (%s of %s)", st.inst.label, _percent(st.used, st.limit), _usd(st.used), _usd(st.limit))

    def _unpriced(self, call: Call, states: list[_State]) -> Decimal:
        """The call's model has no price: refuse under a budget that says so, else reserve 0 and note it."""
        if self.reject_missing_price:
            for st in states:
                if not st.cb.allow_unpriced:
                    dep = call.candidates[0] if call.candidates else None
                    raise GatewayError(
                        403,
                        f"The model '{call.model}' has no price{f' (deployment {dep.name})' if dep else ''}, so "
                        f"{st.inst.label} cannot hold its cost. Add a price under `prices:` in the config, "
                        f"or set `on_missing_price: allow` on the budget.",
                        "permission",
                        param="model",
                    )
        for st in states:
            call.control_actions.append(f"unpriced:{st.cb.name}")
        return ZERO

    async def _rolling_room(self, st: _State, used: Any, amount: Decimal, now: float) -> Placement:
        """When a rolling budget has room for `amount` again, if nothing else
        arrives: its sub-buckets leave the window oldest first, the oldest when
        the current one ends, each next one a step later."""
        clock = st.cb.clock
        assert isinstance(clock, RollingClock)
        first_exit = st.p.window_end
        freed = ZERO
        oldest_first = st.p.check[::-1]
        for j, bucket in enumerate(oldest_first):
            usage = await self.store.usage([bucket])
            freed += Decimal(usage.settled) + Decimal(usage.reserved)
            if Decimal(used) - freed + amount <= st.limit:
                at = first_exit + j * clock.step
                break
        else:  # only calls still in flight hold the room: it frees when they settle
            at = first_exit + len(oldest_first) * clock.step
        return dataclasses.replace(st.p, resets_at=at, reset_iso=iso_in(at, clock.tz))

    def _refuse(self, call: Call, st: _State, used: Any, amount: Decimal, now: float) -> None:
        self._budget_headers(call, st, used, now)
        left = max(st.limit - used, ZERO)
        if isinstance(st.cb.clock, RollingClock):
            when = f"in its rolling {st.cb.clock.text} window (enough older spend leaves it at {st.p.reset_iso})"
        else:
            when = f"until {st.p.reset_iso}"
        raise GatewayError(
            429,
            f"The {st.inst.label} has {_usd(left, ROUND_DOWN)} left of {_usd(st.limit)} {when}; "
            f"this call may cost up to {_usd(amount, ROUND_UP)}.",
            "rate_limit",
        )

    def _budget_headers(self, call: Call, st: _State, used: Any, now: float) -> None:
        left = max(st.limit - used, ZERO)
        h = call.response_headers
        h.append((b"x-spendgate-budget-name", st.cb.name.encode()))
        h.append((b"x-spendgate-budget-limit", _header_money(st.limit)))
        h.append((b"x-spendgate-budget-remaining", _header_money(left)))
        h.append((b"x-spendgate-budget-reset", st.p.reset_iso.encode()))
        h.append((b"retry-after", str(max(1, math.ceil(st.p.resets_at - now))).encode()))

    async def _seed_late(self, cb: CompiledBudget, now: float) -> None:
        """A budget first seen after start-up (a key's new or changed budget):
        rebuild its spend from the ledger once, before any call charges it."""
        sig = cb.signature
        pending = self._seeding.get(sig)
        if pending is not None:
            await asyncio.shield(pending)
            return
        fut = self._seeding[sig] = asyncio.get_running_loop().create_future()
        try:
            assert self._ledger is not None
            seeds = await asyncio.to_thread(ledger_spend, [cb], self._ledger, now, self._served)
            for s in seeds:
                cb.instance(s.instance)
                await self.store.seed(s.counter, s.settled, s.expires_at)
            self._seeded.add(sig)
        except Exception:  # noqa: BLE001 - counting from zero beats failing every call
            log.exception("could not rebuild the spend of budget %s from the ledger; counting from now", cb.name)
            self._seeded.add(sig)
        finally:
            del self._seeding[sig]
            fut.set_result(None)

    # ---- admin (BudgetAdmin) -----------------------------------------------------------------

    def _known(self) -> list[CompiledBudget]:
        return [*self.budgets, *self._key_budgets.values()]

    async def budget_status(self) -> list[dict[str, Any]]:
        """Every known budget instance: limits, bursts, spend, window, slowdown step in force."""
        now = self.clock()
        rows = []
        for cb in self._known():
            names = set(cb.instances)
            if cb.fixed is not None:
                names.add(cb.fixed)
            for name in sorted(names):
                st = await self._state(cb, name, now)
                u = await self.store.usage(st.p.check)
                st = st._replace(used=u.settled + u.reserved)  # summed here, as the figures shown
                step = in_force(cb.steps, st.used, st.limit)
                tz = cb.clock.tz
                rows.append(
                    {
                        "name": cb.name,
                        "instance": name,
                        "scope": _scope_of(name),
                        "window": cb.clock.describe(),
                        "limit": cb.limit,
                        "burst": _plain(st.limit - cb.limit),
                        "effective_limit": st.limit,
                        "spent": _plain(u.settled),
                        "settled": _plain(u.settled),
                        "reserved": _plain(u.reserved),
                        "remaining": _plain(max(st.limit - st.used, ZERO)),
                        "utilization": _ratio(st.used, st.limit),
                        "percent": _percent(st.used, st.limit),
                        "window_start": iso_in(st.p.window_start, tz),
                        "window_end": iso_in(st.p.window_end, tz),
                        "resets_at": st.p.reset_iso,
                        "slowdown": None if step is None else f"{step.action}@{step.at.normalize():f}%",
                        "bursts": [
                            {"id": g.id, "amount": g.amount, "until": iso_in(g.until, tz), "reason": g.reason}
                            for g in self.grants.active(cb.name, name, now)
                        ],
                    }
                )
        return rows

    async def add_burst(self, budget: str | None, scope: dict[str, str], amount: Decimal, until: datetime, reason: str) -> dict[str, Any]:
        """Grant `amount` USD more until `until` to one instance: of `budget`, or
        of every budget having that instance (`budget` None). LookupError:
        unknown budget; ValueError: the scope is no instance of it."""
        now = self.clock()
        instance = instance_name(scope)
        if budget is not None:
            cb = self._by_name.get(budget) or self._key_budgets.get(budget)
            if cb is None and budget.startswith("key:"):
                key_instance = f"key={budget[4:]}"
                if scope and instance != key_instance:
                    raise ValueError(f"budget {budget!r} has one instance, {key_instance}; leave the scope out")
                instance, targets = key_instance, [budget]
            elif cb is None:
                raise LookupError(f"no budget named {budget!r}")
            else:
                if not scope and cb.fixed is not None:
                    instance = cb.fixed
                if not cb.scope.covers_instance(instance):
                    dims = ", ".join(d for d, _ in cb.dims) or "none"
                    raise ValueError(f"scope {instance} is not an instance of budget {budget!r} (scope dimensions: {dims}; spec {cb.budget.scope})")
                targets = [budget]
        else:
            targets = [cb.name for cb in self._known() if cb.scope.covers_instance(instance)]
            if not targets:
                raise ValueError(f"no budget has an instance {instance}")
        grant = BurstGrants.new(budget, instance, amount, until.timestamp(), reason, now)
        await asyncio.to_thread(self.grants.add, grant)
        return {
            "id": grant.id,
            "object": "spendgate.burst_grant",
            "budget": budget,
            "instance": instance,
            "amount": amount,
            "starts_at": iso_in(grant.starts_at, UTC),
            "until": iso_in(grant.until, UTC),
            "reason": reason,
            "applies_to": targets,
        }


def _stated(call: Call) -> int | None:
    """`call.max_tokens` where it is `max_tokens(call)`: right after `ensure_max_tokens`
    (and any slowdown cap, which keeps the two equal), when positive."""
    bound = call.max_tokens
    return bound if bound is not None and bound > 0 else None


def _charges(states: list[_State], amount: Decimal) -> tuple[Charge, ...]:
    """A tuple: the store keeps it as it is (`tuple()` of a tuple copies nothing)."""
    out = []
    for st in states:
        p = st.p
        out.append(new_charge((p.counter, amount, st.limit, p.check, p.expires_at, p.resets_at, st.inst.label)))
    return tuple(out)


# ---- formatting --------------------------------------------------------------------------------


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _usd(amount: Any, rounding: str = ROUND_HALF_EVEN) -> str:
    """Dollars with at least 2 and at most 6 decimals: $200.00, $0.0125, $0.000315."""
    d = Decimal(amount)
    q = d.quantize(MICRO, rounding=rounding)
    if q == 0 and d != 0:
        return "less than $0.000001" if d > 0 else "-$0.000001"
    whole, _, frac = format(q, "f").partition(".")
    frac = frac.rstrip("0").ljust(2, "0")
    return f"{'-' if whole.startswith('-') else ''}${whole.lstrip('-')}.{frac}"


def _plain(amount: Any) -> Decimal:
    """An exact amount as shown by the admin API: 0 rather than 0E-7."""
    d = Decimal(amount)
    return ZERO if d == 0 else d


def _header_money(amount: Any) -> bytes:
    d = amount if type(amount) is Decimal else Decimal(amount)
    # str() of a value with exponent -6 is its plain notation (what format(…, "f") gives), sooner
    return str(_quantize_down(d, HEADER_PLACES)).encode()


def _ratio(used: Any, limit: Decimal) -> str:
    if limit <= 0:
        return "1" if not used else "inf"
    return format((Decimal(used) / limit).quantize(Decimal("0.0001")), "f")


def _percent(used: Any, limit: Decimal) -> str:
    if limit <= 0:
        return "100"
    return format((Decimal(used) * 100 / limit).quantize(Decimal("0.1")).normalize(), "f")


def _rolling_window_no(clock: RollingClock, now: float) -> float:
    return float(int(now // clock.length))


def _scope_of(instance: str) -> dict[str, str]:
    if instance == "global":
        return {}
    return dict(p.split("=", 1) for p in instance.split(",") if "=" in p)


__all__ = ["BudgetStage", "CompiledBudget", "KeyBudgets", "signature"]
