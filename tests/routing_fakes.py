"""Small fakes the routing unit tests share: a settable clock and a deployment."""

from __future__ import annotations

from typing import Any

from spendgate.config import Deployment


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def dep(name: str, **kw: Any) -> Deployment:
    return Deployment(name=name, provider="openai", model="m", base_url="http://x/v1", **kw)
