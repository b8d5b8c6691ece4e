"""Metering SDK streams in place, so the caller keeps the very object the SDK returned.

The SDKs' `Stream`/`AsyncStream` read items from `self._iterator` and close
through `self.close()`. We put a generator around the original `_iterator`
(it passes every item through, reading usage on the way) and an instance
`close` in front of the class's. Type, attributes and `isinstance` stay those
of the SDK, and helpers built on the stream (anthropic's `MessageStream`,
openai's `ChatCompletionStream`) are metered too, because they read the same
iterator.

The event is recorded once, when the stream:
- ends: `status='ok'`;
- raises: `status='error'` (re-raised unchanged);
- is closed or dropped early: `status='client_disconnect'` with the usage seen
  so far (`usage_source='estimated'` when no usage block arrived). A stream
  closed after its finish reason, once its usage is in, counts as `ok`.

Neither the generator nor `close` holds a strong reference to the stream (the
SDKs rely on a dropped stream being freed, which closes its connection).
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

from spendgate.sdk.events import Recorder

_DRAIN_LIMIT = 4  # chunks read after the finish reason to pick up the usage chunk


def _read(rec: Recorder, wire: str, item: Any) -> bool:
    """Feed one item to the recorder; True when it is a usage-only chunk."""
    if wire == "openai":
        return rec.openai_chunk(item)
    rec.anthropic_event(item)
    return False


def _hide_usage_field(chunk: Any) -> None:
    """The caller did not ask for usage: make `usage: null` look unsent, as it would have been."""
    if getattr(chunk, "usage", 0) is None:
        fields_set = getattr(chunk, "__pydantic_fields_set__", None)
        if isinstance(fields_set, set):
            fields_set.discard("usage")


def _early_status(rec: Recorder) -> str:
    return "ok" if (rec.complete or rec.finish_reason is not None) and rec.usage_known else "client_disconnect"


def _drain(rec: Recorder, wire: str, inner: Iterator[Any]) -> None:
    """After the finish reason only the usage chunk is left: read it rather than estimate."""
    if wire != "openai" or rec.usage_known or rec.finish_reason is None:
        return
    try:
        for _ in range(_DRAIN_LIMIT):
            _read(rec, wire, next(inner))
            if rec.usage_known:
                return
    except Exception:  # StopIteration, a closed connection: keep what we have
        return


async def _adrain(rec: Recorder, wire: str, inner: AsyncIterator[Any]) -> None:
    if wire != "openai" or rec.usage_known or rec.finish_reason is None:
        return
    try:
        for _ in range(_DRAIN_LIMIT):
            _read(rec, wire, await inner.__anext__())
            if rec.usage_known:
                return
    except Exception:
        return


def _metered(inner: Iterator[Any], rec: Recorder, wire: str, strip_usage: bool) -> Iterator[Any]:
    try:
        while True:
            try:
                item = next(inner)
            except StopIteration:
                rec.finish("ok")
                return
            except GeneratorExit:
                raise
            except BaseException as exc:
                rec.finish("error", exc)
                raise
            rec.first_chunk()
            if _read(rec, wire, item) and strip_usage:
                continue  # the usage-only chunk the caller did not ask for
            if strip_usage:
                _hide_usage_field(item)
            yield item
    except GeneratorExit:
        if not rec.done:
            _drain(rec, wire, inner)
            rec.finish(_early_status(rec))
        raise
    finally:
        if not rec.done:  # pragma: no cover - every path above finishes
            rec.finish("client_disconnect")
        close = getattr(inner, "close", None)
        if close is not None:
            close()


async def _ametered(inner: AsyncIterator[Any], rec: Recorder, wire: str, strip_usage: bool) -> AsyncIterator[Any]:
    try:
        while True:
            try:
                item = await inner.__anext__()
            except StopAsyncIteration:
                rec.finish("ok")
                return
            except GeneratorExit:
                raise
            except BaseException as exc:  # CancelledError included: the caller stopped waiting
                rec.finish("client_disconnect" if type(exc).__name__ == "CancelledError" else "error", exc)
                raise
            rec.first_chunk()
            if _read(rec, wire, item) and strip_usage:
                continue
            if strip_usage:
                _hide_usage_field(item)
            yield item
    except GeneratorExit:
        if not rec.done:
            await _adrain(rec, wire, inner)
            rec.finish(_early_status(rec))
        raise
    finally:
        if not rec.done:  # pragma: no cover
            rec.finish("client_disconnect")
        aclose = getattr(inner, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except RuntimeError:  # already running or closed from elsewhere
                pass


def _on_drop(rec: Recorder) -> None:
    if not rec.done:
        rec.finish("client_disconnect")


def meter_stream(stream: Any, rec: Recorder, wire: str, strip_usage: bool = False) -> Any:
    """Meter a sync SDK `Stream` in place and return it."""
    inner: Iterator[Any] = stream._iterator  # anthropic builds it lazily, on first access
    stream.__dict__["_iterator"] = _metered(inner, rec, wire, strip_usage)
    ref = weakref.ref(stream)

    def close() -> None:
        if not rec.done:
            _drain(rec, wire, inner)
            rec.finish(_early_status(rec))
        s = ref()
        if s is not None:
            type(s).close(s)

    stream.__dict__["close"] = close
    weakref.finalize(stream, _on_drop, rec).atexit = False
    return stream


def meter_async_stream(stream: Any, rec: Recorder, wire: str, strip_usage: bool = False) -> Any:
    """Meter an `AsyncStream` in place and return it."""
    inner: AsyncIterator[Any] = stream._iterator
    stream.__dict__["_iterator"] = _ametered(inner, rec, wire, strip_usage)
    ref = weakref.ref(stream)

    async def close() -> None:
        if not rec.done:
            await _adrain(rec, wire, inner)
            rec.finish(_early_status(rec))
        s = ref()
        if s is not None:
            await type(s).close(s)

    stream.__dict__["close"] = close
    weakref.finalize(stream, _on_drop, rec).atexit = False
    return stream
