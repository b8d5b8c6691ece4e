"""`POST /v1/spendgate/events`: usage recorded by the SDK wrapper elsewhere.

The gateway trusts the caller for token counts only: identity comes from the
key that authenticated the post, and cost is re-computed with the gateway's
own price catalog, so a client can neither pose as another team nor set its
own price.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from spendgate.config import Config, Deployment
from spendgate.controls.identify import ANY_KEY_ID, KeyRing, default_tags, owner_tags, presented_key
from spendgate.controls.tags import validate_tags
from spendgate.errors import GatewayError
from spendgate.ledger.events import TAG_COLUMNS, ZERO, UsageEvent
from spendgate.pricing.catalog import PriceCatalog, TokenUsage
from spendgate.pricing.prompt_cache import SAVED_BY, prompt_cache_saved, uses_prompt_cache

log = logging.getLogger("spendgate.ingest")

MAX_EVENTS = 1000
_PROVIDERS = {"openai": "openai", "azure_openai": "azure", "anthropic": "anthropic", "gemini": "google"}


class Ingest:
    def __init__(self, keys: KeyRing, catalog: PriceCatalog, sink: Any, config: Config) -> None:
        self.keys = keys
        self.catalog = catalog
        self.sink = sink
        self.config = config
        self.deployments: dict[str, Deployment] = {d.name: d for d in config.deployments}

    async def handle(self, headers: dict[str, str], raw: bytes | None) -> tuple[int, dict[str, Any]]:
        try:
            return 200, self._accept(headers, raw)
        except GatewayError as err:
            return err.status, {"error": {"message": err.message, "type": "invalid_request_error" if err.status == 400 else err.kind}}

    def _accept(self, headers: dict[str, str], raw: bytes | None) -> dict[str, Any]:
        if not self.config.ingest.enabled:
            raise GatewayError(404, "The ingest endpoint is disabled.", "not_found")
        key = self.keys.authenticate(presented_key(headers))
        if raw is None:
            raise GatewayError(413, "Too large.")
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise GatewayError(400, f"Body is not JSON: {exc}") from None
        items = payload.get("events") if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise GatewayError(400, "Body must be {\"events\": [...]}.")
        if len(items) > MAX_EVENTS:
            raise GatewayError(400, f"At most {MAX_EVENTS} events per post.")
        events = [self._event(item, key) for item in items]
        for ev in events:
            self.sink.submit(ev)
        return {"accepted": len(events)}

    def _event(self, item: Any, key: Any) -> UsageEvent:
        if not isinstance(item, dict):
            raise GatewayError(400, "Each event must be an object.")
        try:
            ev = UsageEvent.from_dict(item)
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise GatewayError(400, f"Malformed event: {exc}") from None
        tags = {k: str(v) for k, v in ev.all_tags().items()}
        validate_tags(tags, self.config.tags)
        merged = default_tags(key)
        merged.update(tags)
        merged.update(owner_tags(key))
        for name in TAG_COLUMNS:
            setattr(ev, name, None)
        ev.tags = {}
        ev.apply_tags(merged)
        ev.key_id = key.id if key else ANY_KEY_ID
        if ev.source == "proxy":
            ev.source = "ingest"
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cache_write_1h_tokens"):
            value = getattr(ev, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise GatewayError(400, f"Malformed event: {name} must be a non-negative integer.")
        # Money is the gateway's to compute; text is stored only where the gateway stores text.
        ev.cost = ev.list_cost = ev.saved = ZERO
        ev.saved_by, ev.price_status, ev.price_source = None, "priced", "no-usage"
        if not self.config.privacy.store_text:
            ev.request_text = ev.response_text = None
        usage = TokenUsage(
            input_tokens=int(ev.input_tokens or 0),
            output_tokens=int(ev.output_tokens or 0),
            cache_read_tokens=int(ev.cache_read_tokens or 0),
            cache_write_tokens=int(ev.cache_write_tokens or 0),
            reasoning_tokens=int(ev.reasoning_tokens or 0),
            cache_write_1h_tokens=min(int(ev.cache_write_1h_tokens or 0), int(ev.cache_write_tokens or 0)),
        )
        ev.cache_write_1h_tokens = usage.cache_write_1h_tokens
        if usage.input_tokens or usage.output_tokens:
            dep = ev.deployment if ev.deployment in self.deployments else None
            provider = _PROVIDERS.get(ev.provider, ev.provider or None)
            priced = self.catalog.price(provider, ev.model_used or ev.model_requested, usage, dep)
            ev.cost, ev.list_cost, ev.price_status, ev.price_source = priced.cost, priced.list_cost, priced.status, priced.source
            if priced.status == "priced" and ev.usage_source == "estimated":
                ev.price_status = "estimated"
            if priced.status == "priced" and uses_prompt_cache(usage):
                saved = prompt_cache_saved(self.catalog, provider, ev.model_used or ev.model_requested, usage, ev.cost, dep)
                if saved is not None:
                    ev.saved, ev.saved_by = saved, SAVED_BY
        return ev
