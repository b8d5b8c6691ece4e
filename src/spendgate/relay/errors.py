"""Upstream error bodies, in the format the client speaks."""

from __future__ import annotations

from typing import Any

import orjson

from spendgate.errors import GatewayError
from spendgate.wire import anthropic as anthropic_wire
from spendgate.wire import openai as openai_wire
from spendgate.wire.translate_response import anthropic_error_to_openai, openai_error_to_anthropic

def render(err: GatewayError, wire: str) -> bytes:
    return (anthropic_wire if wire == "anthropic" else openai_wire).error_body(err)


def error_type_of(body: Any) -> str | None:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return err.get("type") or err.get("code")
    return None


def relay_error(status: int, raw: bytes, upstream_wire: str, client_wire: str) -> tuple[bytes, str]:
    """Body for the client and the error type for the ledger."""
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    etype = error_type_of(body) or f"http_{status}"
    if not isinstance(body, dict) or "error" not in body:
        err = GatewayError(status, f"The upstream provider answered HTTP {status}.", "upstream")
        return render(err, client_wire), etype
    if upstream_wire == client_wire:
        return raw, etype
    if client_wire == "openai":
        return orjson.dumps(anthropic_error_to_openai(status, body)), etype
    return orjson.dumps(openai_error_to_anthropic(status, body)), etype
