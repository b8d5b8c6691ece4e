"""Meter stage: one attempt's usage → exact cost → a UsageEvent for the ledger."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from spendgate.config import Deployment, PrivacyConfig
from spendgate.ledger.events import UsageEvent
from spendgate.pipeline import Call
from spendgate.pricing.catalog import PriceCatalog, TokenUsage
from spendgate.pricing.prompt_cache import SAVED_BY, prompt_cache_saved, uses_prompt_cache


@dataclass(slots=True)
class Attempt:
    """What one upstream attempt did; filled while the response is relayed."""

    deployment: Deployment
    number: int
    route_reason: str = "direct"
    ts_start: float = field(default_factory=time.time)
    ts_end: float = 0.0
    ttft_ms: float | None = None
    status: str = "ok"  # ok | error | client_disconnect
    http_status: int | None = None
    error_type: str | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)
    usage_source: str = "provider"
    finish_reason: str | None = None
    model_used: str | None = None
    response_text: str | None = None
    recorded: bool = False  # its ledger event was written (exactly once)
    wasted: bool = False  # a cascade step whose answer failed its checks (paid, then escalated)
    buffered: bool = False  # a cascade step read whole (never streamed), whatever the client asked


def attribute(ev: UsageEvent, call: Call) -> None:
    """Who the call belongs to and what the controls did to it, on its event."""
    ev.apply_tags(call.tags)
    if call.control_actions:
        ev.control_actions = ";".join(call.control_actions)
    if call.missing_tags:
        ev.missing_tags = ",".join(call.missing_tags)


ROUTING = "routing"


class Meter:
    def __init__(self, catalog: PriceCatalog, privacy: PrivacyConfig) -> None:
        self.catalog = catalog
        self.privacy = privacy

    def event(self, call: Call, attempt: Attempt, prompt_text: str | None = None) -> UsageEvent:
        dep = attempt.deployment
        end = attempt.ts_end or time.time()
        model_used = attempt.model_used or dep.model
        u = attempt.usage
        ev = UsageEvent(
            request_id=call.request_id,
            attempt=attempt.number,
            ts_start=attempt.ts_start,
            ts_end=end,
            latency_ms=round((end - attempt.ts_start) * 1000, 3),
            ttft_ms=attempt.ttft_ms,
            endpoint=call.endpoint,
            wire_format=call.wire,
            provider=dep.provider,
            deployment=dep.name,
            model_requested=call.requested_model,
            model_used=model_used,
            route_reason=attempt.route_reason,
            streamed=call.stream and not attempt.buffered,
            status=attempt.status,
            http_status=attempt.http_status,
            error_type=attempt.error_type,
            finish_reason=attempt.finish_reason,
            key_id=call.key_id,
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            cache_read_tokens=u.cache_read_tokens,
            cache_write_tokens=u.cache_write_tokens,
            cache_write_1h_tokens=u.cache_write_1h_tokens,
            reasoning_tokens=u.reasoning_tokens,
            usage_source=attempt.usage_source,
            request_hash=call.request_hash,
            prefix_hashes=call.prefix_hashes,
            cache_status=call.cache_status,
            cache_scope=call.cache_scope,
        )
        attribute(ev, call)
        if u.input_tokens or u.output_tokens:
            priced = self.catalog.price(dep.catalog_provider, model_used, u, dep.name)
            ev.cost, ev.list_cost, ev.price_source = priced.cost, priced.list_cost, priced.source
            ev.price_status = "estimated" if priced.status == "priced" and attempt.usage_source == "estimated" else priced.status
            if uses_prompt_cache(u) and priced.status == "priced":
                self._prompt_cache_saving(ev, dep, model_used, u)
            if call.route_baseline is not None and priced.status == "priced" and attempt.status == "ok":
                self._routing_saving(ev, call.route_baseline, u, attempt.wasted)
        else:
            ev.price_status = "priced"
            ev.price_source = "no-usage"
        if self.privacy.store_text:
            ev.request_text = prompt_text
            ev.response_text = attempt.response_text
        return ev

    def _routing_saving(self, ev: UsageEvent, baseline: Deployment, u: TokenUsage, wasted: bool) -> None:
        """What routing saved against sending the call to the baseline ("always
        flagship"): the same tokens at the baseline's price, minus the cost. A
        cascade step that was paid for and then escalated saved minus its cost."""
        if wasted:
            saved = -ev.cost
        elif baseline.name == ev.deployment:
            return
        else:
            base = self.catalog.price(baseline.catalog_provider, baseline.price_model or baseline.model, u, baseline.name)
            if base.status != "priced":
                return
            saved = base.cost - ev.cost
        ev.saved += saved
        ev.saved_by = f"{ev.saved_by},{ROUTING}" if ev.saved_by else ROUTING

    def _prompt_cache_saving(self, ev: UsageEvent, dep: Deployment, model: str, u: TokenUsage) -> None:
        """What the provider's prompt cache saved: the same call with every prompt
        token billed as plain input, minus what it cost. Cache writes, billed
        above the input price, count against it: a write-only call saves < 0."""
        saved = prompt_cache_saved(self.catalog, dep.catalog_provider, model, u, ev.cost, dep.name)
        if saved is not None:
            ev.saved, ev.saved_by = saved, SAVED_BY
