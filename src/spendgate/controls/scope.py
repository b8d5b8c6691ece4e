"""Which calls a scope covers, and which counter instance a call falls in.

A scope `{team: search, user: "*"}` covers calls tagged team=search that have
any user; each distinct user gets its own instance, named
`team=search,user=alice`. `{}` covers every call (one global instance).
"""

from __future__ import annotations

from collections.abc import Callable

from spendgate.pipeline import Call

ANY = "*"


def dimension(call: Call, dim: str) -> str | None:
    """The call's value for a scope dimension (None: the call has none)."""
    if dim == "key":
        return call.key_id
    if dim == "model":
        return call.model
    if dim == "deployment":
        return call.deployment_name
    if dim == "service":
        return call.key.service if call.key is not None else None
    if dim == "team" and "team" not in call.tags and call.key is not None:
        return call.key.team  # a key's owner team counts as its calls' team
    if dim.startswith("tag:"):
        return call.tags.get(dim[4:])
    return call.tags.get(dim)


def getter(dim: str) -> Callable[[Call], str | None]:
    """`dimension(call, dim)` as a function of the call alone, for one fixed `dim`
    (what compiled scopes and rules call on every request)."""
    if dim == "key":
        return _key_id
    if dim == "model":
        return _model
    if dim == "deployment":
        return _deployment
    if dim == "service":
        return _service
    if dim == "team":
        return _team
    name = dim[4:] if dim.startswith("tag:") else dim

    def tag(call: Call) -> str | None:
        return call.tags.get(name)

    return tag


def _key_id(call: Call) -> str | None:
    return call.key_id


def _model(call: Call) -> str | None:
    return call.model


def _deployment(call: Call) -> str | None:
    return call.deployment_name


def _service(call: Call) -> str | None:
    return call.key.service if call.key is not None else None


def _team(call: Call) -> str | None:
    tags = call.tags
    if "team" in tags:
        return tags["team"]
    return call.key.team if call.key is not None else None  # a key's owner team counts as its calls' team


NAMES_KEPT = 10_000  # instance names remembered per one-dimension scope; beyond, start over


class Scope:
    """A compiled scope: cheap to test against every call."""

    __slots__ = ("spec", "_dims", "_tests", "_names")

    def __init__(self, spec: dict[str, str]) -> None:
        self.spec = dict(spec)
        self._dims = sorted(spec.items())
        # per dimension: (value getter, wanted value or None for any, "dim=")
        self._tests = tuple((getter(dim), None if wanted == ANY else wanted, f"{dim}=") for dim, wanted in self._dims)
        # one dimension: value -> "dim=value", the same string object every time (built
        # once, its hash kept for the lookups that follow in the stages)
        self._names: dict[str, str] = {}

    def instance(self, call: Call) -> str | None:
        """The instance name for `call`, or None when the scope does not cover it."""
        tests = self._tests
        if not tests:
            return "global"
        if len(tests) == 1:
            get, wanted, prefix = tests[0]
            value = get(call)
            if value is None or (wanted is not None and value != wanted):
                return None
            name = self._names.get(value)
            if name is None:
                if len(self._names) >= NAMES_KEPT:
                    self._names.clear()
                name = self._names[value] = f"{prefix}{value}"
            return name
        parts: list[str] = []
        for get, wanted, prefix in tests:
            value = get(call)
            if value is None or (wanted is not None and value != wanted):
                return None
            parts.append(f"{prefix}{value}")
        return ",".join(parts)

    def covers_instance(self, instance: str) -> bool:
        """Whether a concrete instance name (e.g. from a burst grant) belongs to this scope."""
        if instance == "global":
            return not self._dims
        given = dict(p.split("=", 1) for p in instance.split(",") if "=" in p)
        if set(given) != {d for d, _ in self._dims}:
            return False
        return all(wanted == ANY or given[d] == wanted for d, wanted in self._dims)


def instance_name(spec: dict[str, str]) -> str:
    """The instance name of a fully concrete scope (no `*`), e.g. for burst grants."""
    items = sorted(spec.items())
    return ",".join(f"{d}={v}" for d, v in items) if items else "global"
