"""Where the SDK wrapper's events go: a local ledger, a spendgate gateway, or memory.

Every sink's `submit` returns at once (the caller's LLM call is the hot
path); I/O happens on a background thread, and `flush()`/`close()` run at
interpreter exit so a short script loses nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
import orjson

try:  # the openai/anthropic SDKs depend on one of these
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older SDKs ship httpx
    import httpx  # type: ignore[no-redef]

from spendgate.ledger.events import UsageEvent
from spendgate.sdk.events import Sink

log = logging.getLogger("spendgate.sdk")

DEFAULT_LEDGER = "sqlite:///spendgate.db"
INGEST_PATH = "/v1/spendgate/events"


class MemorySink:
    """Keeps events in a list: for tests, notebooks and custom forwarding."""

    def __init__(self) -> None:
        self.events: list[UsageEvent] = []
        self._lock = threading.Lock()

    def submit(self, event: UsageEvent) -> None:
        with self._lock:
            self.events.append(event)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float = 10.0) -> bool:
        return True


class LedgerSink:
    """Writes to a local ledger (`sqlite:///spendgate.db`) through the batched `LedgerWriter`."""

    def __init__(self, url: str, *, batch_size: int = 100, flush_interval_ms: float = 200) -> None:
        from spendgate.ledger.open import open_ledger
        from spendgate.ledger.writer import LedgerWriter

        self.url = url
        self.writer = LedgerWriter(open_ledger(url), batch_size, flush_interval_ms, name="spendgate-sdk-ledger").start()
        self._closed = False
        atexit.register(self.close)

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, event: UsageEvent) -> None:
        try:
            self.writer.submit(event)
        except Exception:  # closed (at exit): say what was lost
            log.error("spendgate: ledger %s is closed; usage event not recorded: %s", self.url, _brief(event))

    def flush(self, timeout: float | None = 10.0) -> bool:
        return self.writer.flush(timeout)

    def close(self, timeout: float = 10.0) -> bool:
        if self._closed:
            return True
        self._closed = True
        atexit.unregister(self.close)
        return self.writer.close(timeout)


class GatewaySink:
    """Batches events and POSTs them to a spendgate gateway's ingest endpoint.

    `POST {gateway_url}/v1/spendgate/events` with `{"events": [...]}` and
    `Authorization: Bearer {api_key}`; the gateway answers 200
    `{"accepted": N}`, re-prices the events and stamps the key's identity.
    Events stay in memory until acknowledged; failures are retried with
    exponential backoff. The buffer is bounded (`max_buffer`): when it is
    full, new events are dropped and counted (`dropped`), with an error
    logged at most every 10 s. A 4xx answer other than 408/429 means the
    batch can never be accepted: it is logged and dropped, not retried.
    """

    def __init__(
        self,
        gateway_url: str,
        api_key: str | None = None,
        batch_size: int = 100,
        flush_interval_s: float = 1.0,
        *,
        max_buffer: int = 100_000,
        timeout_s: float = 10.0,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        exit_timeout_s: float = 5.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.url = gateway_url.rstrip("/") + INGEST_PATH
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.exit_timeout_s = exit_timeout_s
        headers = {"content-type": "application/json", "user-agent": "spendgate-sdk"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(headers=headers, timeout=timeout_s)
        self._pending: deque[UsageEvent] = deque()
        self._inflight = 0
        self._cond = threading.Condition()
        self._flush_wanted = False
        self._closing = False
        self._stop = False
        self.sent = 0
        self.dropped = 0
        self.failed_posts = 0
        self._last_drop_log = 0.0
        self._thread = threading.Thread(target=self._run, name="spendgate-sdk-gateway", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    @property
    def closed(self) -> bool:
        return self._closing

    # --- the caller's side ------------------------------------------------------

    def submit(self, event: UsageEvent) -> None:
        with self._cond:
            if self._closing or len(self._pending) + self._inflight >= self.max_buffer:
                self.dropped += 1
                now = time.monotonic()
                if now - self._last_drop_log >= 10.0:
                    self._last_drop_log = now
                    reason = "the sink is closed" if self._closing else f"{self.max_buffer} events are waiting"
                    log.error(
                        "spendgate: dropping usage events for %s (%s); %d dropped so far, e.g. %s",
                        self.url,
                        reason,
                        self.dropped,
                        _brief(event),
                    )
                return
            self._pending.append(event)
            if len(self._pending) >= self.batch_size:
                self._cond.notify_all()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every submitted event is acknowledged; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flush_wanted = True
            self._cond.notify_all()
            try:
                while self._pending or self._inflight:
                    if not self._thread.is_alive():
                        return False
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
                return True
            finally:
                self._flush_wanted = False

    def close(self, timeout: float = 10.0) -> bool:
        """Send what is waiting (up to `timeout`), then stop; unsent events are logged."""
        with self._cond:
            if self._stop:
                return not self._pending
        clean = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._stop = True
            self._cond.notify_all()
        self._thread.join(max(1.0, min(timeout, 5.0)))
        with self._cond:
            left = list(self._pending)
            self._pending.clear()
        if left:
            self.dropped += len(left)
            log.error("spendgate: %d usage events were never accepted by %s and are lost", len(left), self.url)
            for event in left:
                log.error("spendgate: lost usage event: %s", _brief(event))
        self._http.close()
        atexit.unregister(self._at_exit)
        return clean and not left

    def _at_exit(self) -> None:
        self.close(self.exit_timeout_s)

    # --- the background thread --------------------------------------------------

    def _take(self) -> list[UsageEvent] | None:
        """The next batch, once it is full, old enough, or wanted; None to stop."""
        with self._cond:
            oldest_wait_until = time.monotonic() + self.flush_interval_s
            while True:
                if self._stop:
                    return None
                if self._pending and (
                    len(self._pending) >= self.batch_size or self._flush_wanted or time.monotonic() >= oldest_wait_until
                ):
                    n = min(self.batch_size, len(self._pending))
                    batch = [self._pending.popleft() for _ in range(n)]
                    self._inflight = n
                    return batch
                if not self._pending:
                    oldest_wait_until = time.monotonic() + self.flush_interval_s
                    self._cond.wait()
                    oldest_wait_until = time.monotonic() + self.flush_interval_s
                else:
                    self._cond.wait(max(0.0, oldest_wait_until - time.monotonic()))

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            delay = self.retry_initial_s
            while True:
                outcome = self._post(batch)
                if outcome != "retry":
                    break
                self.failed_posts += 1
                with self._cond:
                    if not self._stop:
                        self._cond.wait(delay)
                    if self._stop:
                        # close() gave up waiting: put the batch back so it is reported as lost
                        self._pending.extendleft(reversed(batch))
                        self._inflight = 0
                        self._cond.notify_all()
                        return
                delay = min(delay * 2, self.retry_max_s)
            with self._cond:
                self._inflight = 0
                if outcome == "ok":
                    self.sent += len(batch)
                self._cond.notify_all()

    def _post(self, batch: list[UsageEvent]) -> str:
        try:
            body = orjson.dumps({"events": [e.to_dict() for e in batch]}, default=str)
        except Exception:
            log.exception("spendgate: could not serialize %d usage events; dropping them", len(batch))
            return "drop"
        try:
            resp = self._http.post(self.url, content=body)
        except Exception as exc:
            log.warning("spendgate: posting %d usage events to %s failed (%s); will retry", len(batch), self.url, exc)
            return "retry"
        if resp.status_code == 200:
            return "ok"
        if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
            log.error(
                "spendgate: %s refused %d usage events with %d: %s; dropping them",
                self.url,
                len(batch),
                resp.status_code,
                resp.text[:500],
            )
            return "drop"
        log.warning("spendgate: %s answered %d to %d usage events; will retry", self.url, resp.status_code, len(batch))
        return "retry"


def _brief(event: UsageEvent) -> str:
    return (
        f"{{event_id={event.event_id} model={event.model_used or event.model_requested} "
        f"in={event.input_tokens} out={event.output_tokens} cost={event.cost}}}"
    )


_shared: dict[tuple[str, ...], Sink] = {}
_shared_lock = threading.Lock()


def resolve_sink(
    *, ledger: str | None = None, gateway_url: str | None = None, api_key: str | None = None
) -> Sink:
    """The sink `instrument()` uses: one per ledger URL or gateway, shared by every client.

    Explicit arguments first; then `SPENDGATE_URL` (+ `SPENDGATE_API_KEY`);
    then `SPENDGATE_LEDGER`; then `sqlite:///spendgate.db`.
    """
    if ledger is not None and gateway_url is not None:
        raise ValueError("give either ledger= or gateway_url=, not both")
    if ledger is None and gateway_url is None:
        gateway_url = os.environ.get("SPENDGATE_URL") or None
        if gateway_url is None:
            ledger = os.environ.get("SPENDGATE_LEDGER") or DEFAULT_LEDGER
    key: tuple[str, ...]
    if gateway_url is not None:
        api_key = api_key if api_key is not None else os.environ.get("SPENDGATE_API_KEY")
        key = ("gateway", gateway_url, api_key or "")
    else:
        assert ledger is not None
        key = ("ledger", ledger)
    with _shared_lock:
        sink = _shared.get(key)
        if sink is None or getattr(sink, "closed", False):
            sink = GatewaySink(gateway_url, api_key) if gateway_url is not None else LedgerSink(key[1])
            _shared[key] = sink
        return sink

