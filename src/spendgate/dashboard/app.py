"""ASGI handler for everything under `/dashboard`: the page, the login form,
static files and the API.

Unauthenticated: the login page (HTML) or 401 JSON (API). Static files are
public (nothing secret in them) so the login page can be styled. Responses
carry a strict Content-Security-Policy: scripts only from the gateway.
"""

from __future__ import annotations

import html
import logging
import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import orjson

from spendgate.asgi import Receive, Scope, Send, header_dict, read_body
from spendgate.controls.identify import presented_key
from spendgate.dashboard.api import BadQuery, DashboardApi, to_csv
from spendgate.dashboard.auth import COOKIE, DashboardAuth, Principal, cookie_from, cookie_header

log = logging.getLogger("spendgate.dashboard")

STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".html": "text/html; charset=utf-8", ".md": "text/markdown; charset=utf-8"}
CSP = b"default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
SECURITY_HEADERS = [(b"content-security-policy", CSP), (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
Headers = list[tuple[bytes, bytes]]


def _static(name: str) -> bytes | None:
    root = resources.files("spendgate.dashboard").joinpath("static")
    node = root
    for part in name.split("/"):
        if not part or part.startswith("."):
            return None
        node = node.joinpath(part)
    return node.read_bytes() if node.is_file() else None


class Dashboard:
    """Mounted by the gateway at `/dashboard`."""

    def __init__(self, title: str, auth: DashboardAuth, api: DashboardApi) -> None:
        self.title = title
        self.auth = auth
        self.failures = SignInFailures()
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        headers = header_dict(scope)
        if path.startswith("/dashboard/static/"):
            await self._serve_static(path.removeprefix("/dashboard/static/"), method, send)
            return
        if path == "/dashboard/login":
            await self._login(method, headers, receive, send, _client(scope), _secure(scope, headers))
            return
        if path == "/dashboard/logout" and method == "POST":
            await _respond(send, 303, b"", [(b"location", b"/dashboard/login"), (b"set-cookie", cookie_header("", 0))])
            return
        who = self._who(headers)
        if path.startswith("/dashboard/api/"):
            await self._api(path.removeprefix("/dashboard/api/"), method, scope, who, send)
        elif path in ("/dashboard", "/dashboard/"):
            if method not in ("GET", "HEAD"):
                await _error(send, 405, "The dashboard is read-only.")
            elif who is None:
                await _respond(send, 303, b"", [(b"location", b"/dashboard/login")])
            else:
                await self._html(send, 200, "index.html", who=who.name, role=who.role)
        else:
            await _error(send, 404, f"Unknown dashboard path: {path}")

    def _who(self, headers: dict[str, str]) -> Principal | None:
        return self.auth.by_key(presented_key(headers)) or self.auth.by_token(cookie_from(headers.get("cookie")))

    async def _api(self, rest: str, method: str, scope: Scope, who: Principal | None, send: Send) -> None:
        if who is None:
            reason = "no dashboard keys are configured (set the admin key or a viewer key)" if not self.auth.configured else "send 'Authorization: Bearer <admin or viewer key>' or sign in at /dashboard/login"
            await _error(send, 401, f"Not signed in: {reason}.")
            return
        if method not in ("GET", "HEAD"):
            await _error(send, 405, "The dashboard API is read-only: use GET.")
            return
        csv = rest.endswith(".csv")
        view = rest.removesuffix(".csv")
        params = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True).items()}
        try:
            payload = await self.api.view(view, params, who.name)
        except KeyError:
            await _error(send, 404, f"Unknown dashboard view {view!r}.")
            return
        except BadQuery as exc:
            await _error(send, 400, str(exc))
            return
        except Exception:  # noqa: BLE001 - one broken panel must not take the page down
            log.exception("dashboard view %s failed", view)
            await _error(send, 500, f"The {view} view failed; see the gateway's log.")
            return
        if csv:
            if "columns" not in payload:
                await _error(send, 404, f"The {view} view is not a table (no CSV).")
                return
            disposition = f'attachment; filename="spendgate-{view}.csv"'.encode()
            await _respond(send, 200, to_csv(payload), [(b"content-type", b"text/csv; charset=utf-8"), (b"content-disposition", disposition)])
        else:
            await _respond(send, 200, orjson.dumps(payload), [(b"content-type", b"application/json")])

    async def _login(
        self, method: str, headers: dict[str, str], receive: Receive, send: Send, client: str, secure: bool
    ) -> None:
        if method == "GET":
            await self._html(send, 200, "login.html")
            return
        if method != "POST":
            await _error(send, 405, "Use GET or POST.")
            return
        raw = await read_body(receive, 64 * 1024) or b""
        if self.failures.blocked(client, time.monotonic()):
            await self._html(send, 429, "login.html", error="Too many wrong keys from here; wait a minute and try again.")
            return
        key = (parse_qs(raw.decode("utf-8", "replace")).get("key") or [""])[-1].strip()
        who = self.auth.by_key(key)
        if who is None:
            self.failures.add(client, time.monotonic())
            log.warning("dashboard sign-in refused (wrong key) from %s", client)
            await self._html(send, 401, "login.html", error="That key does not open the dashboard.")
            return
        cookie = cookie_header(self.auth.issue(who), int(self.auth.ttl_s), secure=secure)
        await _respond(send, 303, b"", [(b"location", b"/dashboard"), (b"set-cookie", cookie)])

    async def _html(self, send: Send, status: int, name: str, **values: str) -> None:
        text = (_static(name) or b"").decode()
        for k, v in {"title": self.title, "error": "", "who": "", "role": "", **values}.items():
            text = text.replace("{{" + k + "}}", html.escape(v))
        await _respond(send, status, text.encode(), [(b"content-type", b"text/html; charset=utf-8")])

    async def _serve_static(self, name: str, method: str, send: Send) -> None:
        body = _static(name) if method in ("GET", "HEAD") and not name.endswith(".html") else None
        if body is None:
            await _error(send, 404, "Not found.")
            return
        kind = STATIC_TYPES.get(name[name.rfind(".") :], "application/octet-stream").encode()
        await _respond(send, 200, body, [(b"content-type", kind)], cache=b"public, max-age=300")


async def _respond(send: Send, status: int, body: bytes, headers: Headers, cache: bytes = b"no-store") -> None:
    all_headers = [*headers, (b"content-length", str(len(body)).encode()), (b"cache-control", cache), *SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _error(send: Send, status: int, message: str) -> None:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error"}.get(status, "server_error")
    body = orjson.dumps({"error": {"message": message, "type": kind}})
    await _respond(send, status, body, [(b"content-type", b"application/json")])


def build_dashboard(gateway: Any) -> Dashboard | None:
    """The gateway's dashboard from its config (None when `dashboard.enabled` is false)."""
    from spendgate.admin.api import admin_key_from
    from spendgate.dashboard.panels import Sources
    from spendgate.dashboard.schema import viewer_keys_from

    config = gateway.config
    cfg = config.dashboard
    if not cfg.enabled:
        return None
    auth = DashboardAuth(
        admin_key_from(config.admin), viewer_keys_from(cfg), ttl_s=cfg.session_ttl_s, is_virtual_key=gateway.identify.keys.is_virtual_key
    )
    sources = Sources(
        store=gateway.writer.store,
        top_n=cfg.top_n,
        attribution_tags=tuple(cfg.attribution_tags),
        tiers=config.routing.tiers,
        baseline_model=config.routing.baseline,
        budget_status=gateway.controls.budgets.budget_status if config.budgets else None,
        alert_engine=lambda: getattr(gateway, "alerts", None),
        slos=getattr(config, "slos", None) or None,
    )
    return Dashboard(cfg.title, auth, DashboardApi(cfg, sources))


__all__ = ["COOKIE", "Dashboard", "build_dashboard"]


class SignInFailures:
    """Wrong keys per client over the last minute: guessing keys through the
    sign-in form is slowed to `limit` tries a minute per address."""

    def __init__(self, limit: int = 10, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._seen: dict[str, list[float]] = {}

    def add(self, client: str, now: float) -> None:
        self._seen.setdefault(client, []).append(now)
        if len(self._seen) > 10_000:  # bounded: forget the oldest addresses
            for old in list(self._seen)[: len(self._seen) // 2]:
                del self._seen[old]

    def blocked(self, client: str, now: float) -> bool:
        recent = [t for t in self._seen.get(client, ()) if now - t < self.window_s]
        if recent:
            self._seen[client] = recent
        else:
            self._seen.pop(client, None)
        return len(recent) >= self.limit


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "-"


def _secure(scope: Scope, headers: dict[str, str]) -> bool:
    """Served over HTTPS (directly, or behind a proxy that says so): the cookie gets `Secure`."""
    return scope.get("scheme") == "https" or headers.get("x-forwarded-proto", "").lower() == "https"
