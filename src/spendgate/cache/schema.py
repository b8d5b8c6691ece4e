"""Config schema of the response cache: where entries live, and which calls
may be answered from it (policies).

A policy says which calls it covers (`match`, in the scope syntax of the
controls), which data boundary its entries belong to (`scope`, e.g.
`{tenant: "*"}`: one partition per tenant, or an explicit `shared_pool`),
which caches it uses, and how long answers live. A call no policy covers,
or that lacks the value its scope needs (no tenant tag), is never cached.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spendgate.controls.schema import check_scope
from spendgate.keys.times import parse_duration


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _seconds(value: str | int | float) -> float:
    seconds = float(value) if isinstance(value, (int, float)) else parse_duration(value)
    if seconds <= 0:
        raise ValueError("a TTL must be positive")
    return seconds


class CachePolicy(Strict):
    name: str
    match: dict[str, str] = Field(default_factory=dict)  # which calls ({} = all), values or "*"
    scope: dict[str, str] | None = None  # the data boundary, e.g. {tenant: "*"}
    shared_pool: str | None = None  # instead of scope: one pool every covered call shares
    exact: bool = True
    semantic: bool = False  # single-turn questions, answered above `similarity_threshold`
    similarity_threshold: float | None = None  # default: the evaluated one (docs/caching-semantic-eval.md)
    ttl: str | int | float = "1h"
    ttl_by_template: dict[str, str | int | float] = Field(default_factory=dict)  # prompt_template → TTL
    nondeterministic: bool = False  # also cache calls with temperature > 0 (or unset)

    @field_validator("match", "scope")
    @classmethod
    def _dims(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return None if v is None else check_scope(v)

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: str | int | float) -> str | int | float:
        _seconds(v)
        return v

    @field_validator("ttl_by_template")
    @classmethod
    def _ttls(cls, v: dict[str, str | int | float]) -> dict[str, str | int | float]:
        for ttl in v.values():
            _seconds(ttl)
        return v

    @field_validator("similarity_threshold")
    @classmethod
    def _threshold(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v <= 1.0:
            raise ValueError("similarity_threshold is a cosine similarity in (0, 1]")
        return v

    @model_validator(mode="after")
    def _boundary(self) -> "CachePolicy":
        if (self.scope is None) == (self.shared_pool is None):
            raise ValueError(
                f"cache policy {self.name!r}: give exactly one of `scope` (e.g. {{tenant: \"*\"}}) "
                "or `shared_pool` (a named pool every covered call shares)"
            )
        if self.scope == {}:
            raise ValueError(f"cache policy {self.name!r}: an empty scope would share answers across everyone; name a `shared_pool` for that")
        if not (self.exact or self.semantic):
            raise ValueError(f"cache policy {self.name!r}: turn on `exact`, `semantic` or both")
        return self

    def ttl_s(self, template: str | None) -> float:
        if template is not None and template in self.ttl_by_template:
            return _seconds(self.ttl_by_template[template])
        return _seconds(self.ttl)


class CacheConfig(Strict):
    url: str = "sqlite:///spendgate-cache.db"  # entries persist here; "memory" keeps them in process only
    max_entries: int = 100_000  # least recently used entries go first
    flush_interval_ms: int = 200  # write-behind of new entries to `url`
    policies: list[CachePolicy] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> "CacheConfig":
        names = [p.name for p in self.policies]
        if len(names) != len(set(names)):
            raise ValueError("cache policy names must be unique")
        return self
