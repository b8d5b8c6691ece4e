"""The `Cache` interface every response-cache backend implements, and its entry.

An entry is one stored answer: the response body in the client's format,
the data boundary it belongs to (`scope`), what it may be invalidated by
(feature, prompt template/version, model), when it expires, and what the
call that produced it cost — so a hit can say how much it saved. Prompt
text is never stored: the exact key is a hash, and a semantic entry keeps
only the question's embedding vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol


@dataclass(slots=True)
class Entry:
    key: str  # exact key (scope|hash)
    scope: str  # e.g. "tenant=acme" or "pool:faq"
    policy: str
    wire: str  # the client format `body` is in: openai | anthropic
    endpoint: str
    model: str  # the model the client asked for
    body: bytes  # the response, JSON, in the client's format
    created: float
    expires: float
    feature: str | None = None
    prompt_template: str | None = None
    prompt_version: str | None = None
    # what the answer cost when it was made (a hit saves its list cost)
    cost: Decimal = Decimal(0)
    list_cost: Decimal = Decimal(0)
    input_tokens: int = 0
    output_tokens: int = 0
    provider: str = ""
    deployment: str = ""
    model_used: str = ""
    # semantic entries: the partition they may match in, and the question's vector
    partition: str | None = None
    vector: Any = None  # numpy float32 row, normalised
    guard: str | None = None  # numbers/negations hash a semantic match must equal (cache.keys.guard)
    id: int = 0  # assigned by the store (vector index id)
    hits: int = 0


@dataclass(slots=True)
class Invalidation:
    """What to flush; every given field must match (none given: nothing, unless `everything`)."""

    scope: str | None = None
    feature: str | None = None
    prompt_template: str | None = None
    prompt_version: str | None = None
    model: str | None = None
    policy: str | None = None
    everything: bool = False

    def is_empty(self) -> bool:
        return not self.everything and all(
            v is None for v in (self.scope, self.feature, self.prompt_template, self.prompt_version, self.model, self.policy)
        )

    def matches(self, e: Entry) -> bool:
        if self.everything:
            return True
        return (
            (self.scope is None or e.scope == self.scope)
            and (self.feature is None or e.feature == self.feature)
            and (self.prompt_template is None or e.prompt_template == self.prompt_template)
            and (self.prompt_version is None or e.prompt_version == self.prompt_version)
            and (self.model is None or e.model == self.model)
            and (self.policy is None or e.policy == self.policy)
        )


@dataclass(slots=True)
class CacheStats:
    entries: int = 0
    semantic_entries: int = 0
    partitions: int = 0
    by_scope: dict[str, int] = field(default_factory=dict)


class Cache(Protocol):
    """Lookups and writes are synchronous and in-memory fast (they sit on the
    request path); persistence, where a backend has it, is write-behind."""

    def get(self, key: str, now: float) -> Entry | None:
        """The live entry for an exact key, or None (expired entries are dropped)."""
        ...

    def nearest(self, partition: str, vector: Any, threshold: float, now: float, guard: str | None = None) -> tuple[Entry, float] | None:
        """The most similar live entry of the partition at or above `threshold` whose guard
        equals `guard`, with its similarity."""
        ...

    def put(self, entry: Entry) -> None:
        """Store (or replace) the entry under its key."""
        ...

    def invalidate(self, what: Invalidation) -> int:
        """Drop every matching entry; returns how many."""
        ...

    def expire(self, now: float) -> int:
        """Drop expired entries; returns how many."""
        ...

    def stats(self) -> CacheStats: ...

    def close(self) -> None: ...
