"""Intake shared by the OpenAI-shaped endpoints (OpenAI, Azure OpenAI, Gemini's
OpenAI-compatible API): authentication, the JSON body, common parameters, headers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from spendgate.simulator.directives import Controls, read_controls
from spendgate.simulator.errors import (
    AZURE_NO_KEY,
    OPENAI_BAD_JSON,
    OPENAI_NO_KEY,
    Flavor,
    Refusal,
    azure_error,
    bad_request,
    openai_error,
)
from spendgate.simulator.ids import request_id
from spendgate.simulator.state import SimulatorState

_STATIC_HEADERS = {
    "openai-version": "2020-10-01",
    "openai-organization": "spendgate-simulator",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "29999000",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "2ms",
}
_AZURE_HEADERS = {
    "x-ms-region": "East US",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "29999000",
}
CONTENT_FILTER_OK = {
    name: {"filtered": False, "severity": "safe"} for name in ("hate", "self_harm", "sexual", "violence")
}


@dataclass(slots=True)
class Intake:
    """One parsed OpenAI-shaped request."""

    flavor: Flavor  # "openai" (also Gemini) or "azure"
    body: dict[str, Any]
    model: str  # what the response names: the body's model, or the Azure deployment
    started: float

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        rid = request_id()
        if self.flavor == "azure":
            h = {"apim-request-id": rid, "x-request-id": rid, **_AZURE_HEADERS}
        else:
            ms = int((time.perf_counter() - self.started) * 1000)
            h = {"x-request-id": rid, "openai-processing-ms": str(ms), **_STATIC_HEADERS}
        if extra:
            h.update(extra)
        return h


async def intake(request: web.Request, state: SimulatorState, flavor: Flavor, *, needs_model: bool = True) -> Intake:
    """Authenticate and parse; raises `Refusal` with the API's own error response."""
    started = time.perf_counter()
    deployment = request.match_info.get("deployment")
    if flavor == "azure" and not request.query.get("api-version"):
        raise Refusal(
            azure_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        )
    if state.settings.require_auth and not _has_key(request, flavor):
        if flavor == "azure":
            raise Refusal(azure_error(401, "401", AZURE_NO_KEY))
        raise Refusal(openai_error(401, OPENAI_NO_KEY))
    if not needs_model and request.method == "GET":
        return Intake(flavor, {}, deployment or "", started)
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Refusal(openai_error(400, OPENAI_BAD_JSON)) from None
    if not isinstance(body, dict):
        raise bad_request(flavor, f"Invalid type for body: expected an object, but got {type(body).__name__} instead.", code="invalid_type")
    model = deployment or body.get("model")
    if needs_model and (not isinstance(model, str) or not model):
        raise bad_request(flavor, "you must provide a model parameter")
    return Intake(flavor, body, model or "", started)


def _has_key(request: web.Request, flavor: Flavor) -> bool:
    if flavor == "azure" and request.headers.get("api-key", "").strip():
        return True
    auth = request.headers.get("authorization", "")
    return auth[:7].lower() == "bearer " and bool(auth[7:].strip())


def controls_for(request: web.Request, directives: dict[str, str], model: str = "") -> Controls:
    return read_controls(directives, request.headers.get("x-sim-fault"), model)


def bounded_int(body: dict[str, Any], name: str, flavor: Flavor, minimum: int, maximum: int) -> int | None:
    """An optional integer parameter within [minimum, maximum], validated with OpenAI's messages."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(flavor, f"Invalid type for '{name}': expected an integer, but got {type(value).__name__} instead.", name, "invalid_type")
    if value < minimum:
        raise bad_request(
            flavor,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}, but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    if value > maximum:
        raise bad_request(
            flavor,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {maximum}, but got {value} instead.",
            name,
            "integer_above_max_value",
        )
    return value


def positive_int(body: dict[str, Any], name: str, flavor: Flavor, maximum: int | None = None) -> int | None:
    """An optional integer parameter ≥ 1, validated with OpenAI's messages."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(flavor, f"Invalid type for '{name}': expected an integer, but got {type(value).__name__} instead.", name, "invalid_type")
    if value < 1:
        raise bad_request(
            flavor, f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value} instead.", name, "integer_below_min_value"
        )
    if maximum is not None and value > maximum:
        raise bad_request(
            flavor, f"Invalid '{name}': integer above maximum value. Expected a value <= {maximum}, but got {value} instead.", name, "integer_above_max_value"
        )
    return value


def stop_list(body: dict[str, Any], flavor: Flavor) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        return stop
    raise bad_request(flavor, "Invalid 'stop': expected a string or an array of at most 4 strings.", "stop", "invalid_value")


def stream_flags(body: dict[str, Any], flavor: Flavor) -> tuple[bool, bool]:
    """(stream, include_usage); stream_options without stream is a 400, as upstream."""
    stream = bool(body.get("stream"))
    options = body.get("stream_options")
    if options is not None and not stream:
        raise bad_request(flavor, "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options", "invalid_value")
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return stream, include_usage


def json_response(payload: Any, headers: dict[str, str]) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json", headers=headers)
