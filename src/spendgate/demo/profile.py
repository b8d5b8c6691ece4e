"""Token shapes for the demo, measured on a real production trace.

Made-up token counts make made-up costs. The demo instead draws every call's
context and generated tokens from the empirical distribution of the Azure LLM
inference trace 2023 (CC-BY 4.0), reduced by `scripts/derive_demo_profile.py`
to a few quantiles per workload and shipped as `spendgate/data/demo_profile.json`,
so `spendgate demo` needs neither the trace nor the network.

Sampling is inverse-CDF with linear interpolation between the stored
quantiles: cheap, deterministic for a seeded `random.Random`, and faithful to
the trace's medians and tails.
"""

from __future__ import annotations

import bisect
import importlib.resources
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROFILE_RESOURCE = "data/demo_profile.json"
FORMAT = 1


@dataclass(frozen=True, slots=True)
class Distribution:
    """A distribution known by its quantiles: `values[i]` is the `probabilities[i]` quantile."""

    probabilities: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.probabilities) != len(self.values) or len(self.values) < 2:
            raise ValueError("a distribution needs matching probabilities and values, at least two")
        if self.probabilities[0] != 0.0 or self.probabilities[-1] != 1.0:
            raise ValueError("probabilities must run from 0 to 1")
        if any(b < a for a, b in zip(self.probabilities, self.probabilities[1:])):
            raise ValueError("probabilities must not decrease")
        if any(b < a for a, b in zip(self.values, self.values[1:])):
            raise ValueError("quantile values must not decrease")

    def quantile(self, p: float) -> float:
        """The `p` quantile, interpolated linearly between the stored ones."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be within [0, 1], got {p}")
        ps = self.probabilities
        i = bisect.bisect_right(ps, p) - 1
        if i >= len(ps) - 1:
            return self.values[-1]
        lo, hi = ps[i], ps[i + 1]
        if hi == lo:
            return self.values[i + 1]
        return self.values[i] + (self.values[i + 1] - self.values[i]) * (p - lo) / (hi - lo)

    @property
    def median(self) -> float:
        return self.quantile(0.5)

    def sample(self, rng: random.Random, scale: float = 1.0, low: int = 1, high: int | None = None) -> int:
        """One draw as a whole token count, scaled, clamped to [low, high]."""
        n = max(low, round(self.quantile(rng.random()) * scale))
        return n if high is None else min(n, high)


@dataclass(frozen=True, slots=True)
class Workload:
    """One workload of the trace (e.g. `code`, `conv`)."""

    name: str
    requests: int
    duration_s: float
    context_tokens: Distribution
    generated_tokens: Distribution
    minute_weights: tuple[float, ...]  # relative arrivals per minute of the traced hour (mean 1)

    @property
    def mean_rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Profile:
    workloads: dict[str, Workload]
    source: dict[str, Any]

    def workload(self, name: str) -> Workload:
        try:
            return self.workloads[name]
        except KeyError:
            raise KeyError(f"the demo profile has no workload {name!r} (has {sorted(self.workloads)})") from None


def _distribution(probabilities: list[float], values: list[float]) -> Distribution:
    return Distribution(tuple(float(p) for p in probabilities), tuple(float(v) for v in values))


def profile_from_dict(data: dict[str, Any]) -> Profile:
    """Validate and type the profile's JSON form."""
    if data.get("format") != FORMAT:
        raise ValueError(f"unsupported demo profile format {data.get('format')!r} (expected {FORMAT})")
    probabilities = data["probabilities"]
    workloads = {}
    for name, w in data["workloads"].items():
        workloads[name] = Workload(
            name=name,
            requests=int(w["requests"]),
            duration_s=float(w["duration_s"]),
            context_tokens=_distribution(probabilities, w["context_tokens"]),
            generated_tokens=_distribution(probabilities, w["generated_tokens"]),
            minute_weights=tuple(float(x) for x in w["minute_weights"]),
        )
    if not workloads:
        raise ValueError("the demo profile has no workloads")
    return Profile(workloads=workloads, source=dict(data.get("source", {})))


def load_profile(path: str | Path | None = None) -> Profile:
    """The shipped profile (via importlib.resources), or the JSON file at `path`."""
    if path is None:
        text = importlib.resources.files("spendgate").joinpath(PROFILE_RESOURCE).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return profile_from_dict(json.loads(text))
