"""The usage event: one row of the ledger per upstream attempt or cache hit.

Every path into spendgate (proxy, SDK wrapper, ingest endpoint, demo backfill)
produces this same record, so reports never need to know where a call came from.
Money fields are `Decimal`; they are stored as exact decimal strings.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

ZERO = Decimal(0)

# Tag names that have their own column; any other tag goes to `tags`.
TAG_COLUMNS = (
    "team",
    "feature",
    "environment",
    "user",
    "tenant",
    "session_id",
    "prompt_template",
    "prompt_version",
    "experiment",
    "priority",
)


_PROCESS = uuid.uuid4().hex[:8]  # tells apart processes (and gateways) sharing a ledger
_COUNTER = itertools.count()


def new_id() -> str:
    """A unique, roughly time-ordered id without a syscall per call.

    Time prefix keeps SQLite inserts local; the per-process random part and
    counter make it unique across processes and within one nanosecond.
    """
    return f"{time.time_ns():x}{_PROCESS}{next(_COUNTER) & 0xFFFFFF:06x}"


@dataclass(slots=True)
class UsageEvent:
    # identity
    event_id: str = field(default_factory=new_id)
    request_id: str = ""
    attempt: int = 1
    ts_start: float = 0.0  # unix seconds
    ts_end: float = 0.0
    latency_ms: float | None = None
    ttft_ms: float | None = None
    # call
    endpoint: str = ""  # chat.completions | completions | embeddings | messages
    wire_format: str = ""  # openai | anthropic: what the client spoke
    provider: str = ""
    deployment: str = ""
    model_requested: str = ""
    model_used: str = ""
    route_reason: str = "direct"
    streamed: bool = False
    status: str = "ok"  # ok | error | client_disconnect
    http_status: int | None = None
    error_type: str | None = None
    finish_reason: str | None = None
    source: str = "proxy"  # proxy | sdk | ingest | demo
    # attribution
    key_id: str | None = None
    team: str | None = None
    feature: str | None = None
    environment: str | None = None
    user: str | None = None
    tenant: str | None = None
    session_id: str | None = None
    prompt_template: str | None = None
    prompt_version: str | None = None
    experiment: str | None = None
    priority: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # usage (input_tokens counts every prompt token, cached ones included)
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0  # part of cache_write_tokens: Anthropic one-hour writes
    usage_source: str = "provider"  # provider | estimated | none
    # money
    cost: Decimal = ZERO
    list_cost: Decimal = ZERO
    saved: Decimal = ZERO
    saved_by: str | None = None
    price_status: str = "priced"  # priced | missing | estimated
    price_source: str | None = None
    currency: str = "USD"
    # controls: what the control stages did to this call
    control_actions: str | None = None  # e.g. "degrade:search-monthly@80:route gpt-4o->gpt-4o-mini"
    missing_tags: str | None = None  # required tags the call lacked (record_untagged mode)
    # cache (filled by the cache stage in a later issue)
    cache_status: str = "bypass"
    cache_scope: str | None = None
    similarity: float | None = None
    # privacy-safe fingerprints
    request_hash: str | None = None
    prefix_hashes: list[str] = field(default_factory=list)
    # opt-in text capture (privacy.store_text)
    request_text: str | None = None
    response_text: str | None = None
    # joined later through the feedback API
    outcome: str | None = None

    def apply_tags(self, tags: dict[str, str]) -> None:
        """Spread tags over the dedicated columns; keep the rest in `tags`."""
        for name, value in tags.items():
            if name in TAG_COLUMNS:
                setattr(self, name, value)
            else:
                self.tags[name] = value

    def all_tags(self) -> dict[str, str]:
        out = {n: getattr(self, n) for n in TAG_COLUMNS if getattr(self, n) is not None}
        out.update(self.tags)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (decimals as strings) for the ingest API and exports."""
        out = dataclasses.asdict(self)
        for name in ("cost", "list_cost", "saved"):
            out[name] = str(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UsageEvent":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for name in ("cost", "list_cost", "saved"):
            if name in kwargs and kwargs[name] is not None:
                kwargs[name] = Decimal(str(kwargs[name]))
        return cls(**kwargs)


EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(UsageEvent))
