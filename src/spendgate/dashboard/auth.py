"""Who may open the dashboard: the admin key or a read-only viewer key.

An API client presents its key (`Authorization: Bearer` or `x-api-key`). A
browser logs in once with a form; the gateway answers with an HttpOnly,
SameSite=Strict cookie holding a signed session token — never the key — so
page scripts cannot read a secret. The token is `role.name.expiry.mac`, the
MAC keyed by the key it was issued for: it survives restarts and works across
workers, and rotating a key ends its sessions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("spendgate.dashboard")

COOKIE = "spendgate_dashboard"
Role = Literal["admin", "viewer"]


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    name: str


class DashboardAuth:
    """Checks keys and session cookies in constant time."""

    def __init__(
        self,
        admin_key: str | None,
        viewer_keys: dict[str, str],
        *,
        ttl_s: float,
        is_virtual_key: Callable[[str], bool] = lambda _k: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys: dict[tuple[Role, str], bytes] = {}
        if admin_key and not is_virtual_key(admin_key):
            self._keys[("admin", "admin")] = admin_key.encode()
        for name, secret in viewer_keys.items():
            if is_virtual_key(secret):  # a caller's key must not double as a dashboard login
                log.error("dashboard viewer %r uses a virtual key: it stays closed until they differ", name)
                continue
            self._keys[("viewer", name)] = secret.encode()
        self.ttl_s = ttl_s
        self.clock = clock

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def by_key(self, presented: str | None) -> Principal | None:
        """The principal a presented key belongs to, or None."""
        if not presented:
            return None
        found = None
        raw = presented.encode()
        for (role, name), secret in self._keys.items():  # no early exit: timing tells nothing
            if hmac.compare_digest(raw, secret):
                found = Principal(role, name)
        return found

    def issue(self, who: Principal) -> str:
        """A session token for `who`, valid for `ttl_s`."""
        expiry = int(self.clock() + self.ttl_s)
        payload = f"{who.role}.{_b64(who.name)}.{expiry}"
        return f"{payload}.{self._mac(who, payload)}"

    def by_token(self, token: str | None) -> Principal | None:
        """The principal of a valid, unexpired session token, or None."""
        if not token:
            return None
        parts = token.split(".")
        if len(parts) != 4 or parts[0] not in ("admin", "viewer"):
            return None
        try:
            name = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)).decode()
            expiry = int(parts[2])
        except (ValueError, UnicodeDecodeError):
            return None
        who = Principal(parts[0], name)  # type: ignore[arg-type]
        if (who.role, who.name) not in self._keys or expiry < self.clock():
            return None
        if not hmac.compare_digest(parts[3], self._mac(who, ".".join(parts[:3]))):
            return None
        return who

    def _mac(self, who: Principal, payload: str) -> str:
        secret = hashlib.sha256(b"spendgate-dashboard-session\0" + self._keys[(who.role, who.name)]).digest()
        return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def cookie_header(token: str, max_age: int, *, secure: bool = False) -> bytes:
    """`Secure` when the page was served over HTTPS (a plain-HTTP localhost gateway could not set it)."""
    flags = "; Secure" if secure else ""
    return f"{COOKIE}={token}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={max_age}{flags}".encode()


def cookie_from(header: str | None) -> str | None:
    """Our session token from a Cookie header."""
    for part in (header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None
