"""The alert engine: judge rules, keep each alert's state, notify once.

An alert is (rule, subject): the day for daily spend, the budget instance,
the model for an unpriced model. Lifecycle:
- it fires: state `firing`, history `fired`, notifiers called, unless the
  same alert was notified less than `cooldown_s` ago (flapping is quiet);
- while it keeps firing: its value is updated; notifiers are called again
  only once `cooldown_s` has passed since the last notification;
- when a scheduled rule no longer sees it (or a per-event alert has had no
  new occurrence for `cooldown_s`): state `resolved`, history `resolved`,
  notifiers called when the rule says `notify_resolved: true` and this
  firing was announced (a re-fire silenced by the cooldown resolves quietly:
  nobody was told it fired, so nobody is told it cleared).

Scheduled rules run in an asyncio task every `evaluate_every_s`. Per-event
rules (single_call, unpriced_model) are judged on the ledger writer's thread
after each written batch (cheap: a comparison per event); what they find is
queued and the asyncio task is woken with `call_soon_threadsafe`, so the
writer never waits on a database write of ours or on the network.
State and history go to ledger side tables (state.py) from a worker thread.
All state transitions happen on the event loop, one evaluation at a time.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Callable, Sequence
from typing import Any

from spendgate.alerts import rules as R
from spendgate.alerts.notifiers import Notification, build, deliver
from spendgate.alerts.schema import PER_EVENT_KINDS, AlertsConfig
from spendgate.alerts.state import AlertState, AlertStore, Statement
from spendgate.ledger.events import UsageEvent

log = logging.getLogger("spendgate.alerts")


class AlertEngine:
    """Evaluates `config.rules`; see the module docstring for the semantics.

    `evaluate(now)` is a coroutine: it runs every scheduled rule once at
    `now`, applies queued per-event findings, and returns after the
    notifications it caused were attempted. `clock` gives "now" (unix
    seconds) for the schedule and per-event findings; tests pass a fake one.
    `budget_config` (the config's `budgets:`) lets rules that name a budget
    be checked at start-up; `slos` are the config's cost SLOs.
    """

    def __init__(
        self,
        config: AlertsConfig,
        store: Any,
        writer: Any = None,
        budgets: Any = None,
        *,
        clock: Callable[[], float] = time.time,
        slos: Sequence[Any] = (),
        budget_config: Sequence[Any] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.budgets = budgets
        self.clock = clock
        self.slos = list(slos)
        self.writer = writer
        self._rules = {r.name: r for r in config.rules}
        self._per_event = [r for r in config.rules if r.kind in PER_EVENT_KINDS]
        self._scheduled = [r for r in config.rules if r.kind not in PER_EVENT_KINDS]
        self._senders = {name: build(cfg) for name, cfg in config.notifiers.items()}
        self._db = AlertStore(store)
        # alerts of rules no longer configured stay in history but are not tracked
        self._states = {k: v for k, v in self._db.load().items() if k[0] in self._rules}
        self._found: queue.SimpleQueue[tuple[float, str, R.Observation]] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        if self._per_event and writer is not None:
            writer.add_listener(self.on_events)
        for rule in self._scheduled:
            if rule.kind in ("budget_utilization",) or (rule.kind == "forecast_over_budget" and rule.budget):
                if budgets is None:
                    raise ValueError(f"alert rule {rule.name!r} needs budgets, and none were given")
            if budget_config is not None and getattr(rule, "budget", None) is not None:
                _check_budget(rule, budget_config)
            if rule.kind == "cost_slo":
                missing = [n for n in rule.slos if n not in {s.name for s in self.slos}]
                if missing or not self.slos:
                    raise ValueError(f"alert rule {rule.name!r}: unknown cost SLO(s) {missing or '(no slos configured)'}")

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the schedule (an asyncio task on the running loop)."""
        if self._task is not None:
            return
        self._bind()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="spendgate-alerts")

    async def close(self) -> None:
        """Stop the schedule; per-event findings of calls already made are still handled
        (the writer is flushed first, so the last calls' alerts still go out)."""
        if self._per_event and self.writer is not None and getattr(self.writer, "running", False):
            await asyncio.to_thread(self.writer.flush, 5.0)
        self._closing = True
        if self._task is not None:
            assert self._wake is not None
            self._wake.set()
            try:
                await self._task
            except Exception:  # noqa: BLE001 - already logged by _run
                pass
            self._task = None
        if not self._found.empty():
            await self.process_pending()

    def _bind(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._lock = asyncio.Lock()

    async def _run(self) -> None:
        assert self._loop is not None and self._wake is not None
        loop = self._loop
        every = self.config.evaluate_every_s
        next_at = loop.time()
        while not self._closing:
            timeout = max(0.0, next_at - loop.time())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._closing:
                break
            try:
                if loop.time() >= next_at:
                    next_at = loop.time() + every
                    await self.evaluate(self.clock())
                else:
                    await self.process_pending()
            except Exception:  # noqa: BLE001 - one bad round must not end alerting
                log.exception("alert evaluation failed")

    # --- per-event rules (writer thread) -----------------------------------

    def on_events(self, events: Sequence[UsageEvent]) -> None:
        """Writer listener: judge per-event rules, queue findings, wake the loop."""
        found = R.per_event(self._per_event, events)
        if not found:
            return
        now = self.clock()
        for name, obs in found:
            self._found.put((now, name, obs))
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not self._closing:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop is closed: close() handles what is queued
                pass

    async def process_pending(self) -> None:
        """Apply queued per-event findings (fire or refresh their alerts) and notify."""
        self._bind()
        assert self._lock is not None
        async with self._lock:
            writes: list[Statement] = []
            notes: list[tuple[Any, Notification]] = []
            while True:
                try:
                    now, name, obs = self._found.get_nowait()
                except queue.Empty:
                    break
                self._fire(self._rules[name], obs, now, writes, notes)
            await self._commit(writes, notes)

    # --- scheduled rules ---------------------------------------------------

    async def evaluate(self, now: float | None = None) -> None:
        """One round at `now` (default: the clock): per-event findings, every scheduled rule,
        expiry of quiet per-event alerts; returns after the notifications were attempted."""
        self._bind()
        assert self._lock is not None
        now = self.clock() if now is None else now
        await self.process_pending()
        ctx = R.Context(self.store, now)
        if self.budgets is not None and any(r.kind in ("budget_utilization", "forecast_over_budget") for r in self._scheduled):
            try:
                ctx.budgets = await self.budgets.budget_status()
            except Exception:  # noqa: BLE001
                log.exception("alerts: reading budget status failed")
        results = await asyncio.to_thread(self._judge, ctx)
        async with self._lock:
            writes: list[Statement] = []
            notes: list[tuple[Any, Notification]] = []
            for rule in self._scheduled:
                found = results.get(rule.name)
                if found is None:
                    continue  # the rule could not be judged: leave its alerts as they are
                firing = {obs.subject for obs in found}
                for obs in found:
                    self._fire(rule, obs, now, writes, notes)
                for st in list(self._states.values()):
                    if st.rule == rule.name and st.status == "firing" and st.subject not in firing:
                        self._resolve(rule, st, now, writes, notes)
            for rule in self._per_event:
                for st in list(self._states.values()):
                    if st.rule == rule.name and st.status == "firing" and now - st.last_seen >= rule.cooldown_s:
                        self._resolve(rule, st, now, writes, notes)
            await self._commit(writes, notes)

    def _judge(self, ctx: R.Context) -> dict[str, list[R.Observation]]:
        """Run each scheduled rule (in a worker thread: these read the ledger)."""
        if self.slos and any(r.kind == "cost_slo" for r in self._scheduled):
            try:
                from spendgate.analytics.slo import slo_status

                ctx.slo_status = list(slo_status(ctx.store, self.slos, ctx.now))
            except Exception:  # noqa: BLE001
                log.exception("alerts: reading cost SLO status failed")
        out: dict[str, list[R.Observation]] = {}
        for rule in self._scheduled:
            try:
                out[rule.name] = R.SCHEDULED[rule.kind](rule, ctx)
            except Exception as exc:  # noqa: BLE001 - one broken rule must not stop the others
                log.error("alert rule %r could not be evaluated: %s: %s", rule.name, type(exc).__name__, exc)
        return out

    # --- state transitions (event loop, under the lock) --------------------

    def _fire(self, rule: Any, obs: R.Observation, now: float, writes: list[Statement], notes: list[tuple[Any, Notification]]) -> None:
        key = (rule.name, obs.subject)
        st = self._states.get(key)
        if st is None or st.status != "firing":
            last_notified = st.last_notified if st is not None else None
            # a new firing: not announced yet (notified_at None), whatever the last one was
            st = AlertState(rule.name, obs.subject, rule.kind, "firing", now, now, last_notified, None, obs.value, obs.threshold, obs.message, None)
            self._states[key] = st
            writes.append(AlertStore.record(now, st, "fired"))
            log.info("alert fired: %s (%s): %s", rule.name, obs.subject, obs.message)
        else:
            st.last_seen, st.value, st.threshold, st.message = now, obs.value, obs.threshold, obs.message
        if rule.notify and (st.last_notified is None or now - st.last_notified >= rule.cooldown_s):
            st.last_notified = now
            if st.notified_at is None:
                st.notified_at = now
            notes.append((rule, self._note(st, "firing", now)))
        writes.append(AlertStore.save(st))

    def _resolve(self, rule: Any, st: AlertState, now: float, writes: list[Statement], notes: list[tuple[Any, Notification]]) -> None:
        st.status, st.resolved_at = "resolved", now
        writes.append(AlertStore.record(now, st, "resolved"))
        writes.append(AlertStore.save(st))
        log.info("alert resolved: %s (%s)", st.rule, st.subject)
        if rule.notify and rule.notify_resolved and st.notified_at is not None:
            notes.append((rule, self._note(st, "resolved", now)))

    @staticmethod
    def _note(st: AlertState, status: str, now: float) -> Notification:
        return Notification(st.rule, st.kind, st.subject, status, st.value, st.threshold, st.message, st.fired_at, now)

    async def _commit(self, writes: list[Statement], notes: list[tuple[Any, Notification]]) -> None:
        """Persist the transitions, then deliver, then record how delivery went."""
        if writes:
            await asyncio.to_thread(self._db.write, writes)
        if not notes:
            return
        jobs, labels = [], []
        for rule, note in notes:
            for name in rule.notify:
                jobs.append(deliver(name, self._senders[name], self.config.notifiers[name], note))
                labels.append((name, note))
        outcomes = await asyncio.gather(*jobs)
        records: list[Statement] = []
        for (name, note), error in zip(labels, outcomes):
            st = self._states[(note.rule, note.subject)]
            event = "notified" if error is None else "notify_failed"
            detail = note.status if error is None else f"{note.status}: {error}"
            records.append(AlertStore.record(self.clock(), _snapshot(st, note), event, name, detail))
        await asyncio.to_thread(self._db.write, records)

    # --- reading -------------------------------------------------------------

    def history(self, limit: int = 100, rule: str | None = None) -> list[dict[str, Any]]:
        """Recent alert history, newest first: fired / notified / notify_failed / resolved."""
        return self._db.history(limit, rule)

    def firing(self) -> list[dict[str, Any]]:
        """Alerts firing now, most recently fired first."""
        items = [s for s in self._states.values() if s.status == "firing"]
        return [s.to_dict() for s in sorted(items, key=lambda s: -s.fired_at)]

    def states(self) -> list[dict[str, Any]]:
        """Every known alert (firing and resolved)."""
        return [s.to_dict() for s in sorted(self._states.values(), key=lambda s: -s.last_seen)]


def _check_budget(rule: Any, budget_config: Sequence[Any]) -> None:
    """A rule naming a budget must name a configured one (monthly, for forecasts)."""
    found = next((b for b in budget_config if b.name == rule.budget), None)
    if found is None:
        known = sorted(b.name for b in budget_config) or "none configured"
        raise ValueError(f"alert rule {rule.name!r}: unknown budget {rule.budget!r} (known: {known})")
    if rule.kind == "forecast_over_budget" and found.window.period != "month":
        raise ValueError(f"alert rule {rule.name!r}: budget {rule.budget!r} is not monthly (window period: month)")


def _snapshot(st: AlertState, note: Notification) -> AlertState:
    """The state as it was when `note` was made (history rows carry the notified values)."""
    return AlertState(
        st.rule, note.subject, note.kind, note.status, note.fired_at, st.last_seen, st.last_notified, st.resolved_at,
        note.value, note.threshold, note.message, st.notified_at,
    )
