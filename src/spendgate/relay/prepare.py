"""The body sent upstream: the client's own bytes when possible, else translated."""

from __future__ import annotations

from typing import Any

import orjson

from spendgate.config import Deployment
from spendgate.errors import GatewayError
from spendgate.pipeline import Call
from spendgate.relay import breakpoints
from spendgate.wire.translate_request import TranslationError, anthropic_to_openai_chat, openai_chat_to_anthropic


def upstream_body(call: Call, dep: Deployment, buffered: bool = False, extra: dict[str, Any] | None = None) -> bytes:
    """Serialize what `dep` must receive for `call`.

    Same format and same model name with nothing to add: the client's bytes
    go through untouched (no re-serialization on the hot path). Streams in
    OpenAI format always ask upstream for usage, so every call can be priced.
    An Anthropic deployment with `prompt_cache.insert_breakpoints` gets cache
    breakpoints added (`relay/breakpoints.py`), whichever format the client spoke.

    `buffered` (a cascade step, judged before the client sees it): asked
    without streaming, with `extra` fields (e.g. logprobs for its check).
    """
    body = call.body
    stream = call.stream
    if buffered:
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        stream = False
    if call.wire == dep.wire:
        changes: dict[str, Any] = {}
        if body["model"] != dep.model:
            changes["model"] = dep.model
        if stream and dep.wire == "openai" and not call.client_wants_usage:
            opts = body.get("stream_options")
            changes["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
        if dep.wire == "anthropic" and call.endpoint == "messages":
            changes.update(_breakpoints(call, dep, body))
        if extra:
            changes.update(extra)
        if not changes:
            return orjson.dumps(body) if call.body_changed or buffered else call.raw_body
        return orjson.dumps({**body, **changes})
    try:
        if call.wire == "openai":
            if call.endpoint != "chat.completions":
                raise GatewayError(400, f"/{call.endpoint} cannot be served by an Anthropic deployment.", param="model")
            out = openai_chat_to_anthropic(body, dep.model)
            out.update(_breakpoints(call, dep, out))
        else:
            field = "max_completion_tokens" if _is_reasoning_model(dep.model) else "max_tokens"
            out = anthropic_to_openai_chat(body, dep.model, max_tokens_field=field)
            if not stream:
                out.pop("stream", None)
                out.pop("stream_options", None)
        out.update(extra or {})
        return orjson.dumps(out)
    except TranslationError as exc:
        raise GatewayError(400, str(exc)) from None


def _breakpoints(call: Call, dep: Deployment, body: dict[str, Any]) -> dict[str, Any]:
    """Cache breakpoints for an Anthropic body, recorded once in the call's control actions."""
    settings = dep.prompt_cache
    if settings is None or not settings.insert_breakpoints:
        return {}
    changes = breakpoints.breakpoint_changes(body, dep.model, settings)
    if changes:
        note = breakpoints.action(changes, settings)
        if note not in call.control_actions:
            call.control_actions.append(note)
    return changes


def _is_reasoning_model(model: str) -> bool:
    """OpenAI reasoning models refuse `max_tokens` and want `max_completion_tokens`."""
    return model.startswith(("o1", "o3", "o4", "gpt-5"))
