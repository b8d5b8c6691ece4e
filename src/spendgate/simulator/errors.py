"""Error responses in each API's own shape, status and headers.

Bodies follow what the real services send, so SDKs raise the same exception
classes against the simulator as against production.
"""

from __future__ import annotations

from typing import Literal

import orjson
from aiohttp import web

from spendgate.simulator.ids import request_id

Flavor = Literal["openai", "azure", "anthropic"]
JSON = "application/json"

OPENAI_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if "
    "you're accessing the API from your browser and are prompted for a username and password. You can "
    "obtain an API key from https://platform.openai.com/account/api-keys."
)
OPENAI_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
    "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you "
    "have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)"
)
AZURE_NO_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource."
)


class Refusal(Exception):
    """Raised anywhere in a handler to answer with `response` instead."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


def openai_error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    rid: str | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    rid = rid or request_id()
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type=JSON,
        headers={"x-request-id": rid, **(headers or {})},
    )


def azure_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """Azure's gateway-level errors (auth, api-version, throttling) use `{error:{code,message}}`."""
    rid = request_id()
    return web.Response(
        status=status,
        body=orjson.dumps({"error": {"code": code, "message": message}}),
        content_type=JSON,
        headers={"apim-request-id": rid, "x-request-id": rid, **(headers or {})},
    )


def anthropic_error(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    rid = request_id("req_011")
    body = {"type": "error", "error": {"type": type_, "message": message}, "request_id": rid}
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON, headers={"request-id": rid, **(headers or {})})


def bad_request(flavor: Flavor, message: str, param: str | None = None, code: str | None = None) -> Refusal:
    """400 invalid_request_error in the caller's format."""
    if flavor == "anthropic":
        return Refusal(anthropic_error(400, "invalid_request_error", message))
    return Refusal(openai_error(400, message, param=param, code=code))


def not_found(flavor: Flavor, method: str, path: str) -> web.Response:
    if flavor == "anthropic":
        return anthropic_error(404, "not_found_error", "Not Found")
    if flavor == "azure":
        return azure_error(404, "404", "Resource not found")
    return openai_error(404, f"Invalid URL ({method} {path})")
