"""One exception for every refusal; each wire format renders it in its own shape."""

from __future__ import annotations


class GatewayError(Exception):
    """A request spendgate answers itself with an error (4xx/5xx).

    `kind` is a neutral error class (invalid_request, authentication,
    permission, not_found, rate_limit, upstream, timeout, overloaded) that the
    wire formats map to their own error types.
    """

    def __init__(self, status: int, message: str, kind: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param


def json_object(raw: bytes, shape: str = "a JSON object") -> dict:  # type: ignore[type-arg]
    """A request body that must be a JSON object, or the 400 that says why not."""
    import orjson

    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"The body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise GatewayError(400, f"The body must be {shape}.")
    return body
