"""A managed key's own limits, as the control stages' config objects.

Budget and rate-limit stages evaluate `controls.schema` objects; a key's
`budget`, `rpm`/`tpm`/`concurrency` and `max_tokens` become such objects
scoped `{key: <id>}` and named `key:<id>`, so keys need no special path in
those stages. They are built once per key version (when the store's index is
rebuilt), not per call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spendgate.config import ApiKey
from spendgate.controls.schema import Budget, Cap, RateLimit
from spendgate.keys.model import VirtualKey
from spendgate.pipeline import Call

if TYPE_CHECKING:
    from spendgate.keys.store import KeyStore


class ModelRule:
    """`allowed_models`: names, `prefix*` globs; empty (or `*`) allows any.

    A plain name also allows its versions — the name followed by `-` and a
    digit (`claude-haiku` → `claude-haiku-4-5`, `gpt-4o` → `gpt-4o-2024-08-06`)
    — but not other models that share its prefix (`gpt-4o` ↛ `gpt-4o-mini`,
    `o1` ↛ `o1-pro`)."""

    __slots__ = ("patterns", "_exact", "_prefixes", "_any")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._exact = frozenset(p for p in self.patterns if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in self.patterns if p.endswith("*"))
        self._any = not self.patterns or "" in self._prefixes

    def allows(self, model: str) -> bool:
        if self._any or model in self._exact or model.startswith(self._prefixes):
            return True
        return any(_is_version_of(model, name) for name in self._exact)


def _is_version_of(model: str, name: str) -> bool:
    n = len(name)
    return len(model) > n + 1 and model.startswith(name) and model[n] == "-" and model[n + 1].isdigit()


def control_name(key_id: str) -> str:
    return f"key:{key_id}"


def key_budgets(rec: VirtualKey) -> tuple[Budget, ...]:
    if rec.budget is None:
        return ()
    return (Budget(name=control_name(rec.id), scope={"key": rec.id}, window=rec.budget.window(), limit=rec.budget.limit),)


def key_rate_limits(rec: VirtualKey) -> tuple[RateLimit, ...]:
    if rec.rpm is None and rec.tpm is None and rec.concurrency is None:
        return ()
    return (RateLimit(name=control_name(rec.id), scope={"key": rec.id}, rpm=rec.rpm, tpm=rec.tpm, concurrency=rec.concurrency),)


def key_caps(rec: VirtualKey) -> tuple[Cap, ...]:
    if rec.max_tokens is None:
        return ()
    return (Cap(name=control_name(rec.id), match={"key": rec.id}, max_tokens=rec.max_tokens),)


def principal(rec: VirtualKey) -> ApiKey:
    """The identity a call made with this key carries (`call.key`); no secret in it."""
    return ApiKey(
        id=rec.id,
        tags=dict(rec.tags),
        team=rec.team,
        user=rec.user,
        service=rec.service,
        allowed_models=list(rec.allowed_models),
    )


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """Everything the hot path needs about one managed key, built ahead of time."""

    record: VirtualKey
    principal: ApiKey
    models: ModelRule
    budgets: tuple[Budget, ...]
    rate_limits: tuple[RateLimit, ...]
    caps: tuple[Cap, ...]

    @classmethod
    def build(cls, rec: VirtualKey) -> "KeyEntry":
        return cls(rec, principal(rec), ModelRule(rec.allowed_models), key_budgets(rec), key_rate_limits(rec), key_caps(rec))


class KeyBudgets:
    """The budgets, rate limits and caps a call's managed key brings with it.

    The budget and rate-limit stages add these to the configured ones. Static
    (config) keys carry none; a call with no key (allow-any mode) neither.
    """

    def __init__(self, store: "KeyStore | None") -> None:
        self.store = store

    def _entry(self, call: Call) -> KeyEntry | None:
        key = call.key
        # managed principals carry no secret; static ones always do, so an id clash cannot mix them up
        if key is None or key.key or self.store is None:
            return None
        return self.store.entry(key.id)

    def budgets_for(self, call: Call) -> list[Budget]:
        entry = self._entry(call)
        return list(entry.budgets) if entry is not None else []

    def rate_limits_for(self, call: Call) -> list[RateLimit]:
        entry = self._entry(call)
        return list(entry.rate_limits) if entry is not None else []

    def caps_for(self, call: Call) -> list[Cap]:
        entry = self._entry(call)
        return list(entry.caps) if entry is not None else []
