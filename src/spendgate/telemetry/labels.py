"""Reading a label (a dimension named in config) off a usage event."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from spendgate.ledger.events import UsageEvent


def _model(e: UsageEvent) -> str:
    return e.model_used or e.model_requested or ""


def _field(name: str) -> Callable[[UsageEvent], str]:
    def read(e: UsageEvent) -> str:
        value = getattr(e, name)
        return "" if value is None else str(value)  # "" = untagged (Prometheus: label absent)

    return read


def reader(names: Sequence[str]) -> Callable[[UsageEvent], tuple[str, ...]]:
    """One function that returns the event's values for `names`, in order."""
    getters = [_model if n == "model" else _field(n) for n in names]
    return lambda e: tuple(g(e) for g in getters)
