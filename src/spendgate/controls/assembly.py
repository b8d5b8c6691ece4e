"""The control stages built from config, with the state they share and their lifecycle.

Order matters: required tags first (cheapest refusal), then caps (they clamp
max_tokens, so everything after reserves the clamped worst case), rate limits
(cheap, turn floods away before budget work), budgets last (a refusal by an
earlier stage never holds budget money).
"""

from __future__ import annotations

import logging

from spendgate.config import Config
from spendgate.controls.budgets import BudgetStage
from spendgate.controls.caps import CapStage
from spendgate.controls.identify import Identify
from spendgate.controls.ratelimits import RateLimitStage
from spendgate.controls.required_tags import RequiredTagsStage
from spendgate.controls.tokens import load_tokenizers
from spendgate.ledger.store import LedgerStore
from spendgate.pipeline import Call, Stage
from spendgate.pricing.catalog import PriceCatalog
from spendgate.routing.router import RouteStage
from spendgate.state.durable import DurableCounterStore, StateDB
from spendgate.state.memory import MemoryCounterStore

log = logging.getLogger("spendgate.controls")


class Controls:
    def __init__(self, config: Config, catalog: PriceCatalog, identify: Identify, route: RouteStage) -> None:
        self.config = config
        try:
            self.state_db: StateDB | None = StateDB.open(config.state.url)
        except ValueError as exc:
            log.warning("budget reservations kept in memory only: %s", exc)
            self.state_db = None
        # Budget reservations survive a restart; rate-limit counts need not (a
        # restored concurrency slot would block a key for a whole TTL).
        self.counters: DurableCounterStore | MemoryCounterStore = (
            DurableCounterStore(self.state_db, flush_interval_ms=config.state.flush_interval_ms)
            if self.state_db is not None
            else MemoryCounterStore()
        )
        keys = identify.key_controls
        self.budgets = BudgetStage(config, catalog, self.counters, route, self.state_db, keys)
        self.ratelimits = RateLimitStage(
            config.rate_limits,
            MemoryCounterStore(),
            rate_limits_for=keys.rate_limits_for,
            reservation_ttl_s=config.state.reservation_ttl_s,
            default_max_tokens=config.controls.default_max_tokens,
        )
        # the response cache runs between the two: after the checks that shape
        # the request, before the stages that count and reserve (a hit spends nothing)
        self.required_tags = RequiredTagsStage(config.required_tags)
        self.caps = CapStage(config.caps, caps_for=keys.caps_for)
        self.admission: list[Stage] = [Admission(self.required_tags, self.caps)]
        self.spending: list[Stage] = [self.ratelimits, self.budgets]
        self.stages: list[Stage] = [*self.admission, *self.spending]

    async def start(self, ledger: LedgerStore) -> None:
        """Before serving: tokenizers, reservations recovered, spend rebuilt from the ledger."""
        load_tokenizers(self.config.deployments)
        if isinstance(self.counters, DurableCounterStore):
            self.counters.start()
        await self.budgets.start(ledger)
        self.ratelimits.start()

    async def close(self) -> None:
        """After in-flight calls finished: stop housekeeping, flush reservations."""
        await self.budgets.close()
        await self.ratelimits.close()
        await self.counters.close()


class Admission:
    """Stage: required tags, then caps. One stage rather than two: both only
    look at the request, and every stage costs a coroutine per call."""

    def __init__(self, required_tags: RequiredTagsStage, caps: CapStage) -> None:
        self.required_tags = required_tags
        self.caps = caps

    async def __call__(self, call: Call) -> None:
        self.required_tags.check(call)
        self.caps.apply(call)
