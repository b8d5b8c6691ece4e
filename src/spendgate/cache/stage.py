"""Cache stage: answer a call from a stored response when the same (or, for
configured features, an equivalent) question was answered before within
the caller's data boundary; otherwise note what to store when it returns.

Order in the pipeline: after required tags and caps (the key is taken over
the request as it will be sent) and before rate limits and budgets (a hit
spends nothing, so it neither counts nor reserves). The proxy serves a hit
(`cache/replay.py`) and records it in the ledger with what it saved; after a
successful upstream answer it calls `remember`.

Request header `x-spendgate-cache`: `bypass` (neither read nor write),
`refresh` (do not read; store the new answer), `use` (opt a
non-deterministic request in). Every response says `x-spendgate-cache:
miss|exact|semantic|bypass`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from spendgate.cache import keys
from spendgate.cache.schema import CacheConfig, CachePolicy
from spendgate.cache.store import Cache, Entry
from spendgate.controls.scope import Scope
from spendgate.controls.worst_case import max_tokens
from spendgate.errors import GatewayError
from spendgate.pipeline import Call

log = logging.getLogger("spendgate.cache")

HEADER = "x-spendgate-cache"
TRUNCATED = frozenset({"length", "max_tokens"})  # finish / stop reasons of an answer cut at its bound
_STATUS_HEADERS = {s: (b"x-spendgate-cache", s.encode()) for s in ("miss", "exact", "semantic", "bypass")}


@dataclass(slots=True)
class Plan:
    """A cacheable miss: where its answer goes when it comes back."""

    policy: "CompiledPolicy"
    scope: str
    key: str
    partition: str | None  # semantic partition, when the call is a single-turn question
    question: str | None = None  # that question, in memory for the call's duration only (never stored)
    guard: str | None = None  # numbers/negations a match must share (cache.keys.guard)
    bound: int | None = None  # the output bound the key was taken with (later stages may lower or set it)
    vector: Any = None  # the question's embedding: computed when first needed (not for an exact hit)


@dataclass(slots=True)
class Hit:
    entry: Entry
    status: str  # exact | semantic
    similarity: float | None


class CompiledPolicy:
    __slots__ = ("spec", "name", "match", "scope", "pool", "threshold")

    def __init__(self, spec: CachePolicy, default_threshold: float) -> None:
        self.spec = spec
        self.name = spec.name
        self.match = Scope(spec.match)
        self.scope = Scope(spec.scope) if spec.scope is not None else None
        self.pool = f"pool:{spec.shared_pool}" if spec.shared_pool is not None else None
        self.threshold = spec.similarity_threshold or default_threshold

    def scope_of(self, call: Call) -> str | None:
        if self.pool is not None:
            return self.pool
        assert self.scope is not None
        return self.scope.instance(call)


class CacheStage:
    def __init__(
        self,
        config: CacheConfig,
        cache: Cache | None,
        embed: Callable[[str], Any] | None = None,
        default_threshold: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.embed = embed
        self.policies = [CompiledPolicy(p, default_threshold) for p in config.policies]
        self.clock = clock

    async def __call__(self, call: Call) -> None:
        call.cache_status = "bypass"
        plan = self._plan(call)
        if plan is None:
            call.response_headers.append(_STATUS_HEADERS["bypass"])
            return
        call.cache_scope = plan.scope
        if call.headers.get(HEADER, "").strip().lower() != "refresh":
            hit = self._lookup(call, plan)
            if hit is not None:
                call.cache_hit = hit
                call.cache_status = hit.status
                call.response_headers.append(_STATUS_HEADERS[hit.status])
                return
        call.cache_status = "miss"
        call.cache_plan = plan
        call.response_headers.append(_STATUS_HEADERS["miss"])

    def _plan(self, call: Call) -> Plan | None:
        asked = call.headers.get(HEADER, "").strip().lower()
        if asked not in ("", "bypass", "refresh", "use"):
            raise GatewayError(400, f"{HEADER}: use bypass, refresh or use (got {asked!r}).", param=HEADER)
        if self.cache is None or not self.policies or asked == "bypass":
            return None
        policy = next((p for p in self.policies if p.match.instance(call) is not None), None)
        if policy is None:
            return None
        scope = policy.scope_of(call)
        if scope is None:
            return None  # the call lacks its boundary's value (e.g. no tenant): never share
        if not keys.deterministic(call) and not (policy.spec.nondeterministic or asked == "use"):
            return None
        partition = question = guard = None
        if policy.spec.semantic and self.embed is not None:
            question = keys.question(call)
            if question is not None:
                partition = keys.semantic_partition(call, scope, policy.name)
                guard = keys.guard(question)
        if not policy.spec.exact and partition is None:
            return None
        return Plan(policy, scope, keys.exact_key(call, scope, policy.name), partition, question, guard, max_tokens(call))

    def _vector(self, plan: Plan) -> Any:
        if plan.vector is None and plan.question is not None and self.embed is not None:
            plan.vector = self.embed(plan.question)
        return plan.vector

    def _lookup(self, call: Call, plan: Plan) -> Hit | None:
        assert self.cache is not None
        now = self.clock()
        if plan.policy.spec.exact:
            entry = self.cache.get(plan.key, now)
            if entry is not None:
                entry.hits += 1
                return Hit(entry, "exact", None)
        if plan.partition is not None:
            found = self.cache.nearest(plan.partition, self._vector(plan), plan.policy.threshold, now, plan.guard)
            if found is not None:
                found[0].hits += 1
                return Hit(found[0], "semantic", round(found[1], 6))
        return None

    def remember(self, call: Call, body: bytes, *, cost: Decimal, list_cost: Decimal, input_tokens: int,
                 output_tokens: int, provider: str, deployment: str, model_used: str,
                 finish_reason: str | None = None) -> None:  # fmt: skip
        """Store a successful upstream answer of a planned miss (the proxy calls this)."""
        plan: Plan | None = call.cache_plan
        if plan is None or self.cache is None:
            return
        if call.route_reason == "degrade":
            return  # answered by another model than asked for: not the answer to this key
        if finish_reason in TRUNCATED and max_tokens(call) != plan.bound:
            # a budget's default or slowdown cap cut this answer short: a caller without
            # that pressure, asking the same, must not get the shortened one
            return
        now = self.clock()
        tags = call.tags
        template = tags.get("prompt_template")
        self.cache.put(
            Entry(
                key=plan.key, scope=plan.scope, policy=plan.policy.name, wire=call.wire, endpoint=call.endpoint,
                model=call.requested_model, body=body, created=now, expires=now + plan.policy.spec.ttl_s(template),
                feature=tags.get("feature"), prompt_template=template, prompt_version=tags.get("prompt_version"),
                cost=cost, list_cost=list_cost, input_tokens=input_tokens, output_tokens=output_tokens,
                provider=provider, deployment=deployment, model_used=model_used,
                partition=plan.partition, vector=self._vector(plan), guard=plan.guard,
            )
        )  # fmt: skip
        call.cache_plan = None
