"""Health of each deployment: in-flight calls, latency, failures, cooldowns, rate use.

One `Health` lives in the gateway process and sees every upstream attempt:

    probe = health.start(dep.name, tokens)          # just before sending
    ...
    health.end(dep.name, ok=True, latency_s=0.42, probe=probe)
    health.end(dep.name, ok=False, failure="rate_limited", retry_after_s=20, probe=probe)

Failures that count (`COUNTED`: 429, 5xx, timeouts, connection errors) are
remembered for `window_s`; `allowed_fails` of them within the window *trip* the
deployment: it cools down for `cooldown_s`. A 429 with Retry-After trips it at
once, for at least that long. Once the cooldown has passed the deployment is
half-open: the next call to start is its probe, and no second call is let in
as a probe until that one ends. The probe's success heals the deployment; its
failure cools it again for twice the last cooldown, up to `max_cooldown_s`.
Client errors (a 400, a prompt too long for the context window) say nothing
about the deployment's health and are not counted.

Request and token use over the last 60 s (per-second buckets) keeps each
deployment under its `rpm` / `tpm`: `fits(name, tokens)` says whether one more
call of `tokens` stays under both.

Pure and in-process: no I/O, no locks (one event loop calls it), time read
from an injectable clock (`time.monotonic` by default).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from spendgate.config import Deployment
from spendgate.routing.schema import HealthConfig

# failure kinds a caller passes to `end` (routing/failover.py maps upstream errors
# to them); the first four count toward cooldowns
RATE_LIMITED = "rate_limited"  # 429
SERVER_ERROR = "server_error"  # 5xx (and 529 overloaded)
TIMEOUT = "timeout"
CONNECTION = "connection"  # refused, reset, TLS, DNS
CONTEXT_WINDOW = "context_window"  # prompt too long: try a bigger model, the deployment is fine
CLIENT_ERROR = "client_error"  # any other 4xx
CANCELLED = "cancelled"  # the client went away: nothing learned (a probe's slot is freed, not healed)
COUNTED = frozenset({RATE_LIMITED, SERVER_ERROR, TIMEOUT, CONNECTION})

RATE_WINDOW_S = 60  # rpm / tpm are per minute; one bucket per second


class DeploymentHealth:
    """What `Health` knows of one deployment. Read it through `Health`; its
    fields are public for the balancer's hot path and for tests."""

    __slots__ = (
        "name", "rpm", "tpm", "in_flight", "ewma_s", "samples", "fails", "last_failure",
        "tripped", "cool_until", "cooldown_s", "probing",
        "_req", "_tok", "req_used", "tok_used", "_sec",
    )

    def __init__(self, name: str, rpm: int | None = None, tpm: int | None = None) -> None:
        self.name = name
        self.rpm = rpm
        self.tpm = tpm
        self.in_flight = 0
        self.ewma_s = 0.0  # meaningful once samples > 0
        self.samples = 0
        self.fails: deque[float] = deque()  # times of counted failures (added while healthy, cleared on healing)
        self.last_failure: str | None = None
        self.tripped = False  # cooling down, or half-open waiting for a probe's success
        self.cool_until = 0.0
        self.cooldown_s = 0.0  # the last cooldown set by failures (0: none yet); doubles per failed probe
        self.probing = False  # a probe call is in flight
        # rate: ring of per-second buckets, running sums over the ring
        self._req = [0] * RATE_WINDOW_S
        self._tok = [0] * RATE_WINDOW_S
        self.req_used = 0
        self.tok_used = 0
        self._sec = -(RATE_WINDOW_S + 1)  # the newest second seen; buckets older than _sec - 59 are dropped

    # -- admission --------------------------------------------------------------------------

    def cooling_left(self, now: float) -> float | None:
        """None when a call may go now (healthy, or half-open with the probe
        slot free); else seconds of cooldown left (0.0: waiting for a probe in flight)."""
        if not self.tripped:
            return None
        left = self.cool_until - now
        if left > 0.0:
            return left
        return 0.0 if self.probing else None

    def fits(self, now: float, tokens: int = 0) -> bool:
        """Whether one more call of `tokens` keeps the last 60 s under rpm and tpm."""
        if self.rpm is None and self.tpm is None:
            return True
        self._advance(now)
        if self.rpm is not None and self.req_used + 1 > self.rpm:
            return False
        if self.tpm is not None and self.req_used and self.tok_used + tokens > self.tpm:
            return False  # one call bigger than the whole tpm still goes to an idle deployment
        return True

    # -- rate -------------------------------------------------------------------------------

    def _advance(self, now: float) -> int:
        """Move the window to `now`, dropping the seconds that fell out; the current bucket's index."""
        sec = int(now)
        last = self._sec
        if sec > last:
            if sec - last >= RATE_WINDOW_S:
                if self.req_used or self.tok_used:
                    for i in range(RATE_WINDOW_S):
                        self._req[i] = self._tok[i] = 0
                    self.req_used = self.tok_used = 0
            else:
                req, tok = self._req, self._tok
                for s in range(last + 1, sec + 1):  # bucket s % 60 last held second s - 60
                    i = s % RATE_WINDOW_S
                    if req[i]:
                        self.req_used -= req[i]
                        self.tok_used -= tok[i]
                        req[i] = tok[i] = 0
            self._sec = sec
            return sec % RATE_WINDOW_S
        return last % RATE_WINDOW_S  # same second, or a clock that went back: the newest bucket

    def note_sent(self, now: float, tokens: int) -> None:
        """Count one request of `tokens` sent at `now` toward rpm and tpm."""
        if self.rpm is None and self.tpm is None:
            return
        i = self._advance(now)
        self._req[i] += 1
        self._tok[i] += tokens
        self.req_used += 1
        self.tok_used += tokens


class Health:
    """Health of every deployment, by name (unknown names are tracked on first use, without limits)."""

    def __init__(
        self,
        config: HealthConfig | None = None,
        deployments: Iterable[Deployment] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or HealthConfig()
        self.clock = clock
        self.deps: dict[str, DeploymentHealth] = {}
        self.track(deployments)

    def track(self, deployments: Iterable[Deployment]) -> None:
        """Know these deployments' rpm/tpm (new ones start healthy; a config
        reload keeps what was learned about the others)."""
        for d in deployments:
            s = self.get(d.name)
            s.rpm, s.tpm = d.rpm, d.tpm

    def get(self, name: str) -> DeploymentHealth:
        s = self.deps.get(name)
        if s is None:
            s = self.deps[name] = DeploymentHealth(name)
        return s

    # -- queries (the balancer's) -------------------------------------------------------------

    def cooling_left(self, name: str) -> float | None:
        """None when `name` may take a call now; else seconds of cooldown left (0.0: its probe is in flight)."""
        return self.get(name).cooling_left(self.clock())

    def available(self, name: str) -> bool:
        """Whether a call to `name` now would be normal traffic or its probe (not cooling, probe slot free)."""
        return self.get(name).cooling_left(self.clock()) is None

    def fits(self, name: str, tokens: int = 0) -> bool:
        """Whether one more call of `tokens` to `name` stays under its rpm and tpm over the last 60 s."""
        return self.get(name).fits(self.clock(), tokens)

    def in_flight(self, name: str) -> int:
        return self.get(name).in_flight

    def latency_s(self, name: str) -> float | None:
        """EWMA latency in seconds; None before the first successful call."""
        s = self.get(name)
        return s.ewma_s if s.samples else None

    # -- the attempt's life ------------------------------------------------------------------

    def start(self, name: str, tokens: int = 0) -> bool:
        """A call to `name` is being sent, `tokens` toward its tpm. Returns True
        when this call is the deployment's probe (it was tripped and no probe is
        in flight); pass that back to `end`."""
        s = self.get(name)
        s.in_flight += 1
        if s.rpm is not None or s.tpm is not None:
            s.note_sent(self.clock(), tokens)
        if s.tripped and not s.probing:
            s.probing = True
            return True
        return False

    def end(
        self,
        name: str,
        ok: bool,
        latency_s: float | None = None,
        failure: str | None = None,
        retry_after_s: float | None = None,
        probe: bool = False,
    ) -> None:
        """The call to `name` ended. `latency_s` (total, or to the first byte:
        be consistent) feeds the EWMA on success; `failure` is a kind (see
        `COUNTED`; a failure without a kind counts, `CANCELLED` teaches
        nothing); `retry_after_s` is a 429's Retry-After; `probe` is what
        `start` returned."""
        s = self.get(name)
        if s.in_flight:
            s.in_flight -= 1
        if probe:
            s.probing = False
        if not ok and failure == CANCELLED:
            return
        if ok or (failure is not None and failure not in COUNTED):
            if ok and latency_s is not None:
                if s.samples:
                    a = self.config.latency_alpha
                    s.ewma_s += a * (latency_s - s.ewma_s)
                else:
                    s.ewma_s = latency_s
                s.samples += 1
            if probe:  # the deployment answered: healed
                self._heal(s)
            return
        now = self.clock()
        s.last_failure = failure
        cfg = self.config
        if probe and s.tripped:  # the probe failed: cool again, twice as long
            s.cooldown_s = min(s.cooldown_s * 2, cfg.max_cooldown_s) if s.cooldown_s else cfg.cooldown_s
            s.cool_until = now + s.cooldown_s
        elif not s.tripped:
            fails = s.fails
            fails.append(now)
            edge = now - cfg.window_s
            while fails and fails[0] <= edge:
                fails.popleft()
            if len(fails) >= cfg.allowed_fails:
                s.tripped = True
                s.cooldown_s = cfg.cooldown_s
                s.cool_until = now + cfg.cooldown_s
        if retry_after_s is not None and retry_after_s > 0:
            s.tripped = True
            if now + retry_after_s > s.cool_until:
                s.cool_until = now + retry_after_s

    def _heal(self, s: DeploymentHealth) -> None:
        s.tripped = False
        s.cool_until = 0.0
        s.cooldown_s = 0.0
        s.fails.clear()

    # -- for the admin API and `policy explain` ------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per deployment: state (healthy | cooling | half_open | probing), cooldown
        left, in-flight calls, EWMA latency, failures in the window, rate use."""
        now = self.clock()
        out: dict[str, dict[str, Any]] = {}
        edge = now - self.config.window_s
        for name, s in self.deps.items():
            if not s.tripped:
                state = "healthy"
            elif s.probing:
                state = "probing"
            elif s.cool_until > now:
                state = "cooling"
            else:
                state = "half_open"  # cooled down; the next call is its probe
            if s.rpm is not None or s.tpm is not None:
                s._advance(now)
            out[name] = {
                "state": state,
                "cooldown_left_s": round(max(s.cool_until - now, 0.0), 3) if s.tripped else 0.0,
                "cooldown_s": s.cooldown_s,
                "in_flight": s.in_flight,
                "latency_ewma_ms": round(s.ewma_s * 1000, 3) if s.samples else None,
                "latency_samples": s.samples,
                "recent_failures": sum(1 for t in s.fails if t > edge),
                "last_failure": s.last_failure,
                "rpm": s.rpm,
                "rpm_used": s.req_used if s.rpm is not None or s.tpm is not None else None,
                "tpm": s.tpm,
                "tpm_used": s.tok_used if s.rpm is not None or s.tpm is not None else None,
            }
        return out
