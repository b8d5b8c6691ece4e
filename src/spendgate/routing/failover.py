"""The failover loop: retry a deployment with backoff, then fall back along the chain.

One attempt is run by the caller's `AttemptFn` (relay/attempt.py) and ends in
a `Success` or a `Failure` with a kind. The loop decides what comes next:

- rate_limited, server, timeout, connection, stream (broke before the first
  byte): retry the same deployment, up to its `retries`, after a backoff with
  jitter capped at its `retry_max_wait_s`, or after exactly the provider's
  Retry-After (a longer Retry-After than that fails over at once); then the
  next deployment in the chain; at once if the failure cooled the deployment
  down (a 429's Retry-After does) and a later one is available, so nobody
  calls it before its Retry-After and the client does not wait for it either;
- auth, bad_body: the next deployment at once (retrying cannot help);
- context_length: the model's `context_window_fallbacks`, else the error;
- client: the error goes back to the client (no deployment would take it);
- unservable: the request could not even be written for this deployment (a
  field its provider lacks): the next one, without counting an attempt.

Every attempt reports to `Health`, which cools failing deployments down.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from spendgate.config import Deployment
from spendgate.errors import GatewayError
from spendgate.routing import health as health_kinds
from spendgate.routing.health import Health
from spendgate.routing.schema import RetryConfig
from spendgate.relay.errors import render

NEXT_KINDS = frozenset({"auth", "bad_body"})
# failure kind -> what it tells `Health` (a broken stream, unusable body or refused
# credentials count against the deployment like a 5xx; client errors don't)
HEALTH_KIND = {
    "rate_limited": health_kinds.RATE_LIMITED,
    "server": health_kinds.SERVER_ERROR,
    "stream": health_kinds.SERVER_ERROR,
    "bad_body": health_kinds.SERVER_ERROR,
    "auth": health_kinds.SERVER_ERROR,
    "timeout": health_kinds.TIMEOUT,
    "connection": health_kinds.CONNECTION,
    "context_length": health_kinds.CONTEXT_WINDOW,
    "client": health_kinds.CLIENT_ERROR,
}


@dataclass(slots=True)
class Failure:
    status: int
    body: bytes  # the error in the client's format
    kind: str  # rate_limited | server | timeout | connection | stream | auth | bad_body | context_length | client
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    retry_after: float | None = None


@dataclass(slots=True)
class Success:
    sent: bool  # the client has its answer (streamed or sent)
    body: bytes | None = None  # a buffered answer in the client's format (cascade step)
    verdict: Any = None  # the cascade checks' verdict on a buffered answer
    event: Any = None  # its ledger event
    first_byte_s: float | None = None  # a stream's time to first byte (the latency balancing compares)
    failure: str | None = None  # for Health: the stream broke after its first byte, or the client left


AttemptFn = Callable[[Deployment, int, str], Awaitable["Success | Failure"]]


def kind_of_status(status: int, body: Any = None) -> str:
    """The failure kind of an upstream HTTP error."""
    if status == 429:
        return "rate_limited"
    if status in (408, 504):
        return "timeout"
    if status == 409 or status >= 500:
        return "server"
    if status in (401, 403):
        return "auth"
    if status in (400, 413) and is_context_length(body):
        return "context_length"
    return "client"


_CONTEXT_MARKS = ("context_length_exceeded", "maximum context length", "prompt is too long", "context window", "too many tokens")


def is_context_length(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    err = body.get("error")
    if not isinstance(err, dict):
        return False
    text = " ".join(str(err.get(k) or "") for k in ("code", "type", "message")).lower()
    return any(m in text for m in _CONTEXT_MARKS)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare from LLM APIs; fall back to backoff
    return max(0.0, seconds)


class Failover:
    def __init__(
        self,
        health: Health,
        retry: RetryConfig,
        max_attempts: int,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.health = health
        self.retry = retry
        self.max_attempts = max_attempts
        self.rng = rng or random.Random()
        self.sleep = sleep

    def backoff(self, retry_number: int) -> float:
        """base × 2^(n-1), capped, less a random share (jitter)."""
        r = self.retry
        wait = min(r.backoff_base_s * 2 ** (retry_number - 1), r.backoff_max_s)
        return wait * (1 - r.jitter * self.rng.random())

    async def run(
        self,
        chain: list[Deployment],
        tokens: int,
        first_reason: str,
        attempt: AttemptFn,
        numbers: AttemptNumbers,
        actions: list[str],
        context_fallbacks: Callable[[Deployment], list[Deployment]] | None = None,
        context_only: Collection[str] = (),
        wire: str = "openai",
    ) -> Success | Failure:
        """Try the chain; the first success, or the last failure. `context_only`
        deployments are skipped unless a "prompt too long" leads to them."""
        queue = [d for d in chain if d.name not in context_only] if context_only else list(chain)
        last: Failure | None = None
        reason = first_reason
        i = 0
        while i < len(queue):
            dep = queue[i]
            i += 1
            retries = 0
            while True:
                if numbers.used >= self.max_attempts:
                    return last if last is not None else _exhausted(wire)
                probe = self.health.start(dep.name, tokens)
                started = time.monotonic()
                result: Success | Failure | None = None
                try:
                    result = await attempt(dep, numbers.next(), reason)
                finally:
                    if result is None:  # cancelled or crashed: free the in-flight slot, learn nothing
                        self.health.end(dep.name, ok=False, failure=health_kinds.CANCELLED, probe=probe)
                if isinstance(result, Success):
                    self._report_success(dep.name, result, time.monotonic() - started, probe)
                    return result
                if result.kind == "unservable":  # never sent (e.g. a field this provider lacks): not an attempt
                    self.health.end(dep.name, ok=False, failure=health_kinds.CANCELLED, probe=probe)
                    numbers.unuse()
                    last = last or result
                    break
                last = result
                self.health.end(
                    dep.name, ok=False, failure=HEALTH_KIND[result.kind], retry_after_s=result.retry_after, probe=probe
                )
                if result.kind == "client":
                    return result
                if result.kind == "context_length":
                    fallbacks = context_fallbacks(dep) if context_fallbacks is not None else []
                    if not fallbacks:
                        return result
                    actions.append(f"context-fallback:{dep.name}->{fallbacks[0].name}")
                    queue, i, reason = fallbacks, 0, "failover"
                    break
                if result.kind in NEXT_KINDS or retries >= dep.retries:
                    reason = "failover"
                    break
                if not self.health.available(dep.name) and any(self.health.available(d.name) for d in queue[i:]):
                    reason = "failover"  # it is cooling (e.g. a 429's Retry-After): a healthy one answers sooner
                    break
                if result.retry_after is not None:
                    wait = result.retry_after
                    if wait > dep.retry_max_wait_s:
                        reason = "failover"  # the provider wants a longer pause than a call may wait: go elsewhere
                        break
                else:
                    wait = min(self.backoff(retries + 1), dep.retry_max_wait_s)
                if numbers.used >= self.max_attempts:
                    return result  # no attempt left to wait for
                retries += 1
                reason = "retry"
                await self.sleep(wait)
        return last if last is not None else _exhausted(wire)

    def _report_success(self, name: str, result: Success, elapsed: float, probe: bool) -> None:
        """An answered attempt; a stream that broke after its first byte still counts against the deployment."""
        if result.failure is not None:
            self.health.end(name, ok=False, failure=result.failure, probe=probe)
            return
        latency = result.first_byte_s if result.first_byte_s is not None else elapsed
        self.health.end(name, ok=True, latency_s=latency, probe=probe)


class AttemptNumbers:
    """Numbers a call's attempts across all its steps, and counts them against `max_attempts`."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used = 0

    def next(self) -> int:
        self.used += 1
        return self.used

    def unuse(self) -> None:
        self.used -= 1


def _exhausted(wire: str) -> Failure:
    """The call's attempts were all spent (a cascade's earlier steps used them)."""
    err = GatewayError(502, "The call used all the upstream attempts it may make (routing.max_attempts).", "upstream")
    return Failure(502, render(err, wire), "server")
