"""`spendgate.instrument(client)`: meter an app's direct OpenAI/Anthropic calls.

For apps that call providers directly rather than through the gateway. The
client's own methods are wrapped in place, so the app keeps its client, its
types and its error handling; every call yields the same `UsageEvent` the
gateway writes (`source='sdk'`), to a local ledger or to a gateway's ingest
endpoint.

Metering never changes what the app sees and never breaks a call: a failure
inside spendgate is logged and the call goes on unmetered.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from spendgate.pricing.catalog import PriceCatalog
from spendgate.sdk.events import (
    SDK_OPTIONS,
    CallInfo,
    Recorder,
    Sink,
    fingerprint,
    is_not_given,
    split_spendgate_headers,
    valid_tags,
)
from spendgate.sdk.streams import meter_async_stream, meter_stream
from spendgate.wire import anthropic as anthropic_wire
from spendgate.wire import openai as openai_wire

log = logging.getLogger("spendgate.sdk")

C = TypeVar("C")

_RAW_HEADER = "x-stainless-raw-response"  # set by the SDKs' with_raw_response / with_streaming_response
_ATTR = "_spendgate_instrumentation"
_AZURE_USAGE_API = "2024-09-01"  # first Azure OpenAI api-version with stream_options

_default_catalog: PriceCatalog | None = None
_catalog_lock = threading.Lock()
_warned: set[str] = set()


def default_catalog() -> PriceCatalog:
    """`Catalog(Config())`: genai-prices list prices, built once per process."""
    global _default_catalog
    with _catalog_lock:
        if _default_catalog is None:
            from spendgate.config import Config
            from spendgate.pricing.catalog import Catalog

            _default_catalog = Catalog(Config())
        return _default_catalog


@dataclass(slots=True)
class Instrumentation:
    """What `instrument()` attached to a client (`client._spendgate_instrumentation`)."""

    provider: str
    wire: str
    tags: dict[str, str]
    catalog: PriceCatalog
    sink: Sink
    inject_usage: bool  # may add stream_options.include_usage to OpenAI streams
    explicit_provider: str | None = None
    wrapped: list[str] = field(default_factory=list)


def detect_provider(client: Any) -> tuple[str, str]:
    """(wire format, provider) from the client's class and base_url."""
    roots = {c.__module__.split(".")[0] for c in type(client).__mro__}
    if "anthropic" in roots:
        return "anthropic", "anthropic"
    if "openai" not in roots:
        raise TypeError(
            f"spendgate.instrument() supports openai and anthropic clients, not {type(client).__qualname__}"
        )
    if any("Azure" in c.__name__ for c in type(client).__mro__):
        return "openai", "azure_openai"
    host = (urlsplit(str(getattr(client, "base_url", ""))).hostname or "").lower()
    if host.endswith((".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")):
        return "openai", "azure_openai"
    if host == "api.openai.com":
        return "openai", "openai"
    if host == "generativelanguage.googleapis.com":
        return "openai", "gemini"
    return "openai", "openai_compatible"


def instrument(
    client: C,
    *,
    tags: dict[str, str] | None = None,
    ledger: str | None = None,
    gateway_url: str | None = None,
    api_key: str | None = None,
    catalog: PriceCatalog | None = None,
    sink: Sink | None = None,
    provider: str | None = None,
) -> C:
    """Meter every call `client` makes; returns the same client, instrumented in place.

    - `tags`: attribution for every call (team, feature, environment, …);
      per call, `extra_headers={"x-spendgate-tags": "k=v,k2=v2"}` adds more
      (the header is removed before the request leaves).
    - where events go: `sink`, else `ledger` (a ledger URL), else
      `gateway_url` + `api_key`, else env `SPENDGATE_URL` + `SPENDGATE_API_KEY`,
      else env `SPENDGATE_LEDGER`, else `sqlite:///spendgate.db`.
    - `catalog`: prices (default: genai-prices list prices).
    - `provider`: override detection (openai | azure_openai | anthropic |
      gemini | openai_compatible), e.g. for a proxy in front of OpenAI.

    Instrumenting twice is a no-op. Copies made with `client.with_options()`
    are instrumented the same way.
    """
    if getattr(client, _ATTR, None) is not None:
        return client
    wire, detected = detect_provider(client)
    if sink is None:
        from spendgate.sdk.sinks import resolve_sink

        sink = resolve_sink(ledger=ledger, gateway_url=gateway_url, api_key=api_key)
    prov = provider or detected
    inst = Instrumentation(
        provider=prov,
        wire=wire,
        tags=valid_tags(tags or {}),
        catalog=catalog if catalog is not None else default_catalog(),
        sink=sink,
        inject_usage=_may_inject_usage(client, prov),
        explicit_provider=provider,
    )
    if wire == "openai":
        chat = getattr(client, "chat", None)
        _wrap_methods(inst, getattr(chat, "completions", None), "chat.completions", ("create", "parse"))
        _wrap_methods(inst, getattr(client, "completions", None), "completions", ("create",))
        _wrap_methods(inst, getattr(client, "embeddings", None), "embeddings", ("create",))
        _forget_cached_wrappers(client, chat)
    else:
        messages = getattr(client, "messages", None)
        _wrap_methods(inst, messages, "messages", ("create",))
        _wrap_anthropic_stream(inst, messages)
        _forget_cached_wrappers(client, messages)
    _wrap_copy(client, inst)
    setattr(client, _ATTR, inst)
    return client


def _may_inject_usage(client: Any, provider: str) -> bool:
    if provider != "azure_openai":
        return True
    version = str(getattr(client, "_api_version", "") or "")
    return version[:10] >= _AZURE_USAGE_API


def _forget_cached_wrappers(*objs: Any) -> None:
    """`with_raw_response` objects capture methods when built; rebuild them from ours."""
    for obj in objs:
        if obj is not None:
            for name in ("with_raw_response", "with_streaming_response"):
                obj.__dict__.pop(name, None)


def _wrap_copy(client: Any, inst: Instrumentation) -> None:
    original = getattr(client, "copy", None)
    if not callable(original):
        return

    @functools.wraps(original)
    def copy(*args: Any, **kwargs: Any) -> Any:
        new = original(*args, **kwargs)
        try:
            instrument(new, tags=dict(inst.tags), catalog=inst.catalog, sink=inst.sink, provider=inst.explicit_provider)
        except Exception:
            log.exception("spendgate: could not instrument a client copy")
        return new

    client.copy = copy
    client.with_options = copy


def _wrap_methods(inst: Instrumentation, resource: Any, endpoint: str, names: tuple[str, ...]) -> None:
    if resource is None:
        return
    for name in names:
        original = getattr(resource, name, None)
        if original is None:
            continue
        setattr(resource, name, _metered_method(original, inst, endpoint))
        inst.wrapped.append(f"{endpoint}.{name}")
    _forget_cached_wrappers(resource)


# --- one call -------------------------------------------------------------------


@dataclass(slots=True)
class _Prepared:
    kwargs: dict[str, Any]  # what the SDK method is called with
    info: CallInfo
    strip_usage: bool  # we added include_usage: hide the usage chunk
    raw: bool  # with_raw_response: the result is a LegacyAPIResponse


def _prepare(inst: Instrumentation, endpoint: str, kwargs: dict[str, Any], stream: bool | None = None) -> _Prepared | None:
    """The call's kwargs for the SDK (spendgate headers out, usage asked for) and its CallInfo.

    None: do not meter (with_streaming_response, whose body the app reads itself).
    """
    call = dict(kwargs)
    if "extra_headers" in call:
        headers, header_tags = split_spendgate_headers(call["extra_headers"])
        call["extra_headers"] = headers
    else:
        headers, header_tags = None, {}
    raw_mode = next((str(v).lower() for k, v in (headers or {}).items() if k.lower() == _RAW_HEADER), None)
    if raw_mode == "stream":
        _warn_once("with_streaming_response", "spendgate: calls made with .with_streaming_response are not metered")
        return None
    body: dict[str, Any] = {}
    for name, value in call.items():
        if name in SDK_OPTIONS or is_not_given(value):
            continue
        if isinstance(value, Iterator):  # a generator of messages: keep it usable for the SDK
            value = call[name] = list(value)
        body[name] = value
    extra_body = call.get("extra_body")
    if isinstance(extra_body, Mapping):
        body.update(extra_body)
    streamed = bool(body.get("stream")) if stream is None else stream
    wire = anthropic_wire if inst.wire == "anthropic" else openai_wire
    tags = dict(inst.tags)
    tags.update(valid_tags(wire.request_tags(body)))
    tags.update(valid_tags(header_tags))
    strip = False
    if streamed and endpoint in ("chat.completions", "completions") and inst.inject_usage and raw_mode is None:
        options = call.get("stream_options")
        if options is None or is_not_given(options):
            call["stream_options"] = {"include_usage": True}
            strip = True
        elif isinstance(options, Mapping) and "include_usage" not in options:
            call["stream_options"] = {**options, "include_usage": True}
            strip = True
    model = body.get("model")
    info = CallInfo(
        endpoint=endpoint,
        wire_format=inst.wire,
        provider=inst.provider,
        model_requested=model if isinstance(model, str) else str(model or ""),
        streamed=streamed,
        tags=tags,
        body=body,
        request_hash=fingerprint(body),
    )
    return _Prepared(call, info, strip, raw_mode is not None)


def _status_for(exc: BaseException) -> str:
    """An abandoned call (task cancelled, Ctrl-C) is the caller leaving, not a provider error."""
    if isinstance(exc, Exception):
        return "error"
    return "client_disconnect"


def _is_stream(obj: Any) -> bool:
    return hasattr(type(obj), "__stream__")  # openai's and anthropic's Stream/AsyncStream


def _after(result: Any, rec: Recorder, prepared: _Prepared) -> Any:
    """Read the response (or meter the stream in place); returns what the SDK returned."""
    try:
        obj = result
        if prepared.raw:
            if type(result).__name__ != "LegacyAPIResponse":
                _warn_once(type(result).__name__, "spendgate: raw responses of this kind are not metered")
                return result
            obj = result.parse()  # cached by the SDK: the app's own parse() gets this object
        if _is_stream(obj):
            if hasattr(type(obj), "__anext__"):
                meter_async_stream(obj, rec, rec.info.wire_format, prepared.strip_usage)
            else:
                meter_stream(obj, rec, rec.info.wire_format, prepared.strip_usage)
            return result
        if rec.info.wire_format == "anthropic":
            rec.anthropic_message(obj)
        else:
            rec.openai_response(obj)
        rec.finish("ok")
    except Exception:
        log.exception("spendgate: could not meter a response")
    return result


def _begin(inst: Instrumentation, endpoint: str, kwargs: dict[str, Any]) -> tuple[_Prepared | None, Recorder | None]:
    try:
        prepared = _prepare(inst, endpoint, kwargs)
        if prepared is None:
            return None, None
        return prepared, Recorder(prepared.info, inst.catalog, inst.sink)
    except Exception:
        log.exception("spendgate: could not prepare metering; the call goes on unmetered")
        return None, None


def _metered_method(original: Callable[..., Any], inst: Instrumentation, endpoint: str) -> Callable[..., Any]:
    """Wrap an SDK method, sync or async alike.

    The SDKs' async methods are plain functions returning a coroutine (their
    argument-checking decorator hides `async def`), so the wrapper looks at
    what the call returned rather than at the function.
    """

    @functools.wraps(original)
    def method(*args: Any, **kwargs: Any) -> Any:
        prepared, rec = _begin(inst, endpoint, kwargs)
        if prepared is None or rec is None:
            return original(*args, **kwargs)
        try:
            result = original(*args, **prepared.kwargs)
        except BaseException as exc:
            rec.finish(_status_for(exc), exc)
            raise
        if inspect.isawaitable(result):
            return _awaited(result, rec, prepared)
        return _after(result, rec, prepared)

    method.__spendgate_wrapped__ = original  # type: ignore[attr-defined]
    return method


async def _awaited(pending: Awaitable[Any], rec: Recorder, prepared: _Prepared) -> Any:
    try:
        result = await pending
    except BaseException as exc:
        rec.finish(_status_for(exc), exc)
        raise
    return _after(result, rec, prepared)


# --- anthropic's messages.stream() helper ------------------------------------------


def _wrap_anthropic_stream(inst: Instrumentation, messages: Any) -> None:
    original = getattr(messages, "stream", None)
    if original is None:
        return

    @functools.wraps(original)
    def stream(*args: Any, **kwargs: Any) -> Any:
        try:
            prepared = _prepare(inst, "messages", kwargs, stream=True)
        except Exception:
            log.exception("spendgate: could not prepare metering; the call goes on unmetered")
            prepared = None
        if prepared is None:
            return original(*args, **kwargs)
        manager = original(*args, **prepared.kwargs)
        cls = _AsyncMessageStreamManager if hasattr(manager, "__aenter__") else _MessageStreamManager
        return cls(manager, prepared.info, inst)

    messages.stream = stream
    inst.wrapped.append("messages.stream")


class _MessageStreamManager:
    """Wraps anthropic's `MessageStreamManager`: the request starts on `__enter__`.

    The `MessageStream` it yields is the SDK's own; its raw stream is metered in
    place, so `text_stream`, `get_final_message()` and plain iteration all count,
    and the event is recorded when the stream ends or the block exits.
    """

    def __init__(self, inner: Any, info: CallInfo, inst: Instrumentation) -> None:
        self._inner = inner
        self._info = info
        self._inst = inst

    def __enter__(self) -> Any:
        rec = Recorder(self._info, self._inst.catalog, self._inst.sink)
        try:
            stream = self._inner.__enter__()
        except BaseException as exc:
            rec.finish(_status_for(exc), exc)
            raise
        try:
            meter_stream(stream._raw_stream, rec, "anthropic")
        except Exception:
            log.exception("spendgate: could not meter a message stream")
        return stream

    def __exit__(self, *exc_info: Any) -> Any:
        return self._inner.__exit__(*exc_info)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _AsyncMessageStreamManager:
    """The async twin of `_MessageStreamManager`."""

    def __init__(self, inner: Any, info: CallInfo, inst: Instrumentation) -> None:
        self._inner = inner
        self._info = info
        self._inst = inst

    async def __aenter__(self) -> Any:
        rec = Recorder(self._info, self._inst.catalog, self._inst.sink)
        try:
            stream = await self._inner.__aenter__()
        except BaseException as exc:
            rec.finish(_status_for(exc), exc)
            raise
        try:
            meter_async_stream(stream._raw_stream, rec, "anthropic")
        except Exception:
            log.exception("spendgate: could not meter a message stream")
        return stream

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._inner.__aexit__(*exc_info)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)
