"""The ledger writer: the request path hands events over, a thread writes them.

`submit(event)` is what the request path calls. It never blocks on I/O and
does no conversion: one queue put under a lock held for that put alone. A
daemon thread drains the queue and calls `store.append(batch)` when a batch
fills (`batch_size`) or when the oldest waiting event is `flush_interval_ms`
old. Converting events to rows happens inside `append`, on that thread.

Durability:
- `flush(timeout)` returns once everything submitted before the call is
  written (True) or the timeout passed (False).
- `close(timeout)` stops accepting events, writes everything already
  submitted, then closes the store: an orderly shutdown loses nothing.
- A failing `append` is logged and retried with exponential backoff, the
  same batch again, for as long as it takes; the store deduplicates by
  `event_id`, so a batch that was written but reported as failed is not
  counted twice.
- An event the store can never hold (`InvalidEvent`, e.g. a NaN cost) is
  taken out of its batch, logged with its full content at ERROR, appended to
  `spill_path` (JSON lines) when one is given, and counted in `rejected`;
  the rest of the batch is written.
- If `close` times out with events still unwritten (the store keeps
  failing), they are logged and spilled the same way, and counted in
  `abandoned`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from spendgate.ledger.events import UsageEvent
from spendgate.ledger.sqlite import InvalidEvent
from spendgate.ledger.store import LedgerStore

log = logging.getLogger(__name__)


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class WriterClosed(RuntimeError):
    """`submit` after `close`: the event was not accepted."""


class LedgerWriter:
    def __init__(
        self,
        store: LedgerStore,
        batch_size: int = 500,
        flush_interval_ms: float = 200,
        *,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 5.0,
        spill_path: str | Path | None = None,
        name: str = "spendgate-ledger-writer",
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if flush_interval_ms < 0:
            raise ValueError("flush_interval_ms must not be negative")
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_ms / 1000.0
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.spill_path = Path(spill_path) if spill_path is not None else None
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards submit's check-and-put and start
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._name = name
        self._give_up = threading.Event()  # set by close() on timeout: stop retrying
        self._store_closed = False
        # counters (written by the writer thread only, except submitted)
        self._submitted = 0
        self._written = 0
        self._failed_batches = 0
        self._rejected = 0
        self._abandoned = 0
        # called on the writer thread with each batch once it is written (metrics, alerts)
        self._listeners: list[Callable[[Sequence[UsageEvent]], None]] = []

    def add_listener(self, listener: Callable[[Sequence[UsageEvent]], None]) -> None:
        """Call `listener(events)` on the writer thread after each written batch.

        Listeners see what is durably in the ledger, off the event loop, each
        event once (one already stored, e.g. an ingest retry, is not passed
        again); one that raises is logged and stops neither the writer nor the
        others.
        """
        self._listeners.append(listener)

    # --- the request path -------------------------------------------------

    def submit(self, event: UsageEvent) -> None:
        """Hand one event to the writer. Never blocks, never does I/O."""
        with self._lock:
            if not self._accepting:
                raise WriterClosed("the ledger writer is closed; event not accepted")
            self._queue.put(event)
            self._submitted += 1

    # --- lifecycle --------------------------------------------------------

    def start(self) -> "LedgerWriter":
        """Start the writer thread (idempotent). Events submitted before wait in the queue."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        return self

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written; False on timeout."""
        self.start()
        if not self.running:  # closed: nothing more will be written
            return self.queue_depth == 0
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """Stop accepting, write everything submitted, close the store.

        Returns True when every accepted event was written (or rejected as
        invalid and spilled). On timeout the unwritten events are logged and
        spilled, and False is returned.
        """
        with self._lock:
            if not self._accepting and self._thread is None:
                return self._abandoned == 0
            self._accepting = False
        if self._thread is None:
            self.start()
        assert self._thread is not None
        self._queue.put(_STOP)
        self._thread.join(timeout)
        clean = True
        if self._thread.is_alive():
            clean = False
            log.error(
                "ledger writer: close timed out after %.1fs with %d events unwritten; "
                "giving up on them (they are logged%s)",
                timeout,
                self.queue_depth,
                f" and spilled to {self.spill_path}" if self.spill_path else "",
            )
            self._give_up.set()
            self._thread.join(10.0)
        if not self._thread.is_alive():
            self._close_store()
        return clean and self._abandoned == 0

    def _close_store(self) -> None:
        if not self._store_closed:
            self._store_closed = True
            try:
                self.store.close()
            except Exception:
                log.exception("ledger writer: closing the store failed")

    def __enter__(self) -> "LedgerWriter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- counters ---------------------------------------------------------

    @property
    def submitted(self) -> int:
        """Events accepted by `submit`."""
        return self._submitted

    @property
    def written(self) -> int:
        """Events handed to a successful `store.append` (duplicates included)."""
        return self._written

    @property
    def failed_batches(self) -> int:
        """`store.append` calls that raised (each retry that fails counts once)."""
        return self._failed_batches

    @property
    def rejected(self) -> int:
        """Events the store refused as invalid (logged and spilled, not written)."""
        return self._rejected

    @property
    def abandoned(self) -> int:
        """Events given up on when `close` timed out (logged and spilled)."""
        return self._abandoned

    @property
    def queue_depth(self) -> int:
        """Events accepted but not yet written, rejected or abandoned."""
        return max(0, self._submitted - self._written - self._rejected - self._abandoned)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the writer thread ------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # pragma: no cover - a bug here must not die quietly
            log.critical(
                "ledger writer thread died; %d events are not being written", self.queue_depth, exc_info=True
            )
            raise

    def _loop(self) -> None:
        batch: list[UsageEvent] = []
        deadline = 0.0
        get = self._queue.get
        stopping = False
        while True:
            if stopping:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    self._write(batch)
                    return
            elif self._give_up.is_set():
                self._abandon(batch)
                return
            elif batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._write(batch)
                    batch = []
                    continue
                try:
                    item = get(timeout=remaining)
                except queue.Empty:
                    self._write(batch)
                    batch = []
                    continue
            else:
                item = get()
            if isinstance(item, UsageEvent):
                if not batch:
                    deadline = time.monotonic() + self.flush_interval_s
                batch.append(item)
                if len(batch) >= self.batch_size:
                    self._write(batch)
                    batch = []
            elif isinstance(item, _Flush):
                self._write(batch)
                batch = []
                item.done.set()
            elif item is _STOP:
                # submit() refuses events now; write what is left in the queue.
                stopping = True
            else:  # pragma: no cover - only our own objects are queued
                log.error("ledger writer: ignoring unexpected queue item %r", item)

    def _write(self, batch: Sequence[UsageEvent]) -> None:
        """Append the batch, retrying until it is written (or close gives up)."""
        pending = list(batch)
        delay = self.retry_initial_s
        while pending:
            if self._give_up.is_set():
                self._abandon(pending)
                return
            fresh: list[UsageEvent] = []
            try:
                self.store.append(pending, stored=fresh)
            except InvalidEvent as exc:
                bad = pending.pop(exc.index) if 0 <= exc.index < len(pending) else pending.pop(0)
                self._reject(bad, exc)
                continue
            except Exception:
                self._failed_batches += 1
                log.exception(
                    "ledger writer: writing %d events failed (attempt %d); retrying in %.2fs",
                    len(pending),
                    self._failed_batches,
                    delay,
                )
                self._give_up.wait(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            self._written += len(pending)
            if fresh:  # a retried ingest batch is counted once by metrics and alerts too
                self._notify(fresh)
            pending = []

    def _notify(self, events: Sequence[UsageEvent]) -> None:
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the ledger
                log.exception("ledger writer: listener %r failed", listener)

    def _reject(self, event: UsageEvent, exc: Exception) -> None:
        self._rejected += 1
        log.error("ledger writer: the store refused an event (%s): %s", exc, _event_json(event))
        self._spill([event])

    def _abandon(self, events: list[UsageEvent]) -> None:
        # everything still queued behind this batch is abandoned as well
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, UsageEvent):
                events.append(item)
            elif isinstance(item, _Flush):
                item.done.set()
        self._abandoned += len(events)
        for event in events:
            log.error("ledger writer: event not written: %s", _event_json(event))
        self._spill(events)

    def _spill(self, events: list[UsageEvent]) -> None:
        if self.spill_path is None or not events:
            return
        try:
            with self.spill_path.open("ab") as f:
                for event in events:
                    f.write(_event_json(event).encode() + b"\n")
        except Exception:
            log.exception("ledger writer: could not spill %d events to %s", len(events), self.spill_path)


def _event_json(event: UsageEvent) -> str:
    try:
        return orjson.dumps(event.to_dict(), default=str).decode()
    except Exception:
        return repr(event)
