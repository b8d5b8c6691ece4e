"""A small client for a running gateway's admin API, for the `keys`, `budgets`, `cache` and `routing` commands.

Standard library only (`urllib.request`), so the CLI adds no dependency. Every
failure becomes an `AdminError` whose message says what to do next.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

DEFAULT_URL = "http://127.0.0.1:4000"


class AdminError(Exception):
    """A request the CLI could not complete; `str()` is the message for the user."""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help=f"the gateway (default: $SPENDGATE_URL or {DEFAULT_URL})")
    parser.add_argument("--admin-key", default=None, help="the admin key (default: $SPENDGATE_ADMIN_KEY)")


class AdminClient:
    def __init__(self, url: str, admin_key: str, timeout_s: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.admin_key = admin_key
        self.timeout_s = timeout_s

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "AdminClient":
        url = args.url or os.environ.get("SPENDGATE_URL") or DEFAULT_URL
        key = args.admin_key or os.environ.get("SPENDGATE_ADMIN_KEY")
        if not key:
            raise AdminError("no admin key: pass --admin-key or set SPENDGATE_ADMIN_KEY (the gateway's admin key)")
        return cls(url, key)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, query: dict[str, str] | None = None) -> Any:
        """JSON in, JSON out; raises AdminError with a useful message on any failure."""
        target = f"{self.url}/admin/{path.lstrip('/')}"
        if query:
            target += "?" + urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(target, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.admin_key}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AdminError(self._explain(exc.code, _message(exc.read()))) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(
                f"cannot reach the gateway at {self.url} ({reason}). Is `spendgate serve` running there? "
                "Point to it with --url or SPENDGATE_URL."
            ) from None

    def routing_status(self) -> dict[str, Any]:
        """`GET /admin/routing`: each deployment's health (state, cooldown left,
        in flight, EWMA latency, recent failures, rpm/tpm use)."""
        return self.request("GET", "routing")

    def _explain(self, status: int, message: str) -> str:
        if status == 401:
            return f"the gateway refused the admin key ({message}). Check --admin-key or SPENDGATE_ADMIN_KEY."
        if status == 403:
            return f"{message} (on the gateway at {self.url}, then restart it)"
        return f"HTTP {status}: {message}"


def _message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")[:300] or "no details"
