"""The call context every stage reads and fills, and the stage contract.

A stage is an async callable `(call) -> None` that may raise `GatewayError`
to refuse the call. Stages run in order before the call is routed; later
issues (controls, cache) add stages without touching the others. A stage that
holds something for the call's duration (a budget reservation, a concurrency
slot) registers a finisher with `call.on_finish`; the proxy runs every
finisher exactly once when the call ends, however it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from spendgate.config import ApiKey
from spendgate.ledger.events import new_id


@dataclass(slots=True)
class Call:
    wire: str  # the client's format: openai | anthropic
    endpoint: str  # chat.completions | completions | embeddings | messages
    body: dict[str, Any]
    raw_body: bytes
    headers: dict[str, str]  # lower-cased names
    model: str
    stream: bool = False
    client_wants_usage: bool = False  # OpenAI stream_options.include_usage as sent
    request_id: str = field(default_factory=new_id)
    ts_start: float = field(default_factory=time.time)
    key: ApiKey | None = None
    key_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    request_hash: str | None = None
    prefix_hashes: list[str] = field(default_factory=list)
    # filled by the control stages
    requested_model: str = ""  # what the client asked for (model may be degraded)
    route_reason: str = "direct"  # why `model` was chosen: direct | policy | cascade | degrade
    max_tokens: int | None = None  # effective output cap (after caps and slowdown)
    input_tokens_estimate: int = 0
    missing_tags: list[str] = field(default_factory=list)
    control_actions: list[str] = field(default_factory=list)  # what controls did, for the ledger
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body_changed: bool = False  # raw_body no longer matches body
    candidates: list[Any] = field(default_factory=list)  # deployments in routing order (route stage)
    # a cascade's steps, cheapest first, each its deployments in routing order
    # (empty: one step, `candidates`); `candidates` then holds them all, flattened
    route_steps: list[list[Any]] = field(default_factory=list)
    route_target: Any = None  # the resolved target (routing.policy.Target)
    route_tokens: int = 0  # the call's token bound as routing counts it toward deployments' tpm
    context_only: list[set[str]] = field(default_factory=list)  # per step: deployments reached only after "prompt too long"
    route_baseline: Any = None  # the deployment routing savings are measured against (None: not routed)
    deployment_name: str | None = None  # the first candidate's name, for scopes
    # filled by the cache stage
    cache_status: str = "bypass"  # miss | exact | semantic | bypass
    cache_scope: str | None = None
    cache_plan: Any = None  # what to store if the call goes upstream (cache.stage.Plan)
    cache_hit: Any = None  # the stored answer that serves this call (cache.stage.Hit)
    # what the call's attempts used, summed as they end
    cost: Decimal = field(default_factory=Decimal)
    input_tokens: int = 0
    output_tokens: int = 0
    finishers: list[Callable[["Call"], Awaitable[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.requested_model:
            self.requested_model = self.model

    def set_field(self, name: str, value: Any) -> None:
        """Change a request field; the body is re-serialized before it goes upstream."""
        self.body[name] = value
        self.body_changed = True

    def on_finish(self, finisher: Callable[["Call"], Awaitable[None]]) -> None:
        self.finishers.append(finisher)

    async def finish(self) -> None:
        """Run every finisher once (settle reservations, free slots)."""
        finishers, self.finishers = self.finishers, []
        for f in finishers:
            try:
                await f(self)
            except Exception:  # noqa: BLE001 - one failing finisher must not skip the others
                logging.getLogger("spendgate.pipeline").exception("finisher failed for request %s", self.request_id)


Stage = Callable[[Call], Awaitable[None]]


async def run_stages(stages: list[Stage], call: Call) -> None:
    """Run the stages in order; a cache hit answers the call, so later stages
    (rate limits, budgets) neither count nor reserve anything for it."""
    for stage in stages:
        await stage(call)
        if call.cache_hit is not None:
            return
