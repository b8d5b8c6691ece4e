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
