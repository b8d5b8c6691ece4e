"""The simulator's knobs, shared by the CLI, the gateway's embedding and tests."""

from __future__ import annotations

from dataclasses import dataclass, field

# Every fault the simulator can produce; see docs/simulator.md.
FAULT_KINDS: tuple[str, ...] = ("429", "500", "503", "529", "timeout", "reset", "cut", "stream_error", "context_length")
# Random faults (fault_rate > 0) pick among these unless told otherwise: a random
# `timeout` hangs a request for minutes, so it has to be asked for by name.
DEFAULT_RANDOM_FAULTS: tuple[str, ...] = ("429", "500", "529", "reset", "cut")


@dataclass(slots=True)
class SimulatorSettings:
    """How the simulator behaves for every request (directives override per request)."""

    latency_ms: float = 0.0  # wait before the first byte of any answer
    tokens_per_second: float = 0.0  # streamed output pacing; 0 = as fast as possible
    fault_rate: float = 0.0  # 0..1: share of requests that get a random fault
    fault_kinds: list[str] = field(default_factory=lambda: list(DEFAULT_RANDOM_FAULTS))
    seed: int = 0  # seeds the random fault draw, so a run can be replayed
    hang_s: float = 300.0  # how long a `timeout` fault holds the request
    require_auth: bool = True  # answer 401 when no key is presented, like the real APIs

    def __post_init__(self) -> None:
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        unknown = [k for k in self.fault_kinds if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}; known: {', '.join(FAULT_KINDS)}")
        if self.latency_ms < 0 or self.tokens_per_second < 0:
            raise ValueError("latency_ms and tokens_per_second must not be negative")
