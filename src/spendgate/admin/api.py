"""The admin HTTP API under `/admin/`: managed keys, burst grants, budget status,
response-cache status and flushes, routing health.

Only the admin key opens it (`Authorization: Bearer <admin key>` or
`x-api-key`), compared in constant time; a virtual key never does. With no
admin key configured the API is off and says how to turn it on. JSON in and
out; errors are `{"error": {"message", "type"}}`.

Budget routes delegate to a `BudgetAdmin` the budget controls provide, so this
module knows the HTTP shape and nothing of how budgets are kept.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson
from pydantic import ValidationError

from spendgate.cache.store import Invalidation
from spendgate.asgi import Receive, Scope, Send, header_dict, read_body, send_json
from spendgate.config import TagRules
from spendgate.controls.identify import KeyRing, presented_key
from spendgate.controls.schema import AdminConfig, check_scope
from spendgate.controls.tags import validate_tags
from spendgate.errors import GatewayError, json_object
from spendgate.keys.model import KeyCreate, KeyFields
from spendgate.keys.store import KeyConflict, KeyNotFound, KeyStore
from spendgate.keys.times import parse_duration, parse_when

log = logging.getLogger("spendgate.admin")

MAX_BODY = 1024 * 1024
_READ_ONLY = frozenset({"id", "secret", "prefix", "created_at", "updated_at", "revoked_at", "rotated_at", "status", "object"})
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    501: "not_implemented_error",
}

Payload = tuple[int, Any]


class BudgetAdmin(Protocol):
    """What the budget controls offer the admin API. Methods may be sync or async.

    Raise `LookupError` for an unknown budget (answered 404) and `ValueError`
    for a grant that cannot apply (400).
    """

    def add_burst(
        self, budget: str | None, scope: dict[str, str], amount: Decimal, until: datetime, reason: str
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Grant `amount` USD extra until `until` (UTC) to `budget` (None: every budget covering `scope`)."""
        ...

    def budget_status(self) -> list[dict[str, Any]] | Awaitable[list[dict[str, Any]]]:
        """Every budget instance: limit, bursts, spent, reserved, window."""
        ...


class CacheAdmin(Protocol):
    """What the response cache offers the admin API."""

    def flush(self, what: Invalidation) -> int: ...

    def status(self) -> dict[str, Any]: ...


class RouterAdmin(Protocol):
    """What the router offers the admin API (`routing.router.Router`)."""

    @property
    def health(self) -> Any: ...  # `routing.health.Health`: `snapshot()`

    def models(self) -> list[str]: ...

    def strategy(self, model: str) -> str: ...

    def deployments_of(self, model: str) -> list[Any]: ...


_FLUSH_FIELDS = {"scope": "scope", "feature": "feature", "prompt_template": "prompt_template", "prompt_version": "prompt_version", "model": "model", "policy": "policy"}


def admin_key_from(config: AdminConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """The admin key: `admin.key` in the config, else the variable `admin.key_env` names."""
    return config.key or environ.get(config.key_env) or None


class AdminApi:
    """ASGI handler for `/admin/...`, mounted by the gateway."""

    def __init__(
        self,
        store: KeyStore | None,
        keys: KeyRing,
        admin_key: str | None,
        *,
        key_env: str = "SPENDGATE_ADMIN_KEY",
        tag_rules: TagRules | None = None,
        budgets: BudgetAdmin | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keys = keys
        self.budgets = budgets  # set by the budget controls when they start
        self.cache: CacheAdmin | None = None  # set by the gateway
        self.router: RouterAdmin | None = None  # set by the gateway
        self.key_env = key_env
        self.tag_rules = tag_rules or TagRules()
        self.clock = clock
        self._admin_key = admin_key.encode() if admin_key else None
        if admin_key and keys.is_virtual_key(admin_key):
            log.error("the admin key is also a virtual key: the admin API stays closed until they differ")
            self._admin_key = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(receive, MAX_BODY)
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        status, payload = await self.dispatch(scope["method"], scope["path"], query, header_dict(scope), raw)
        await send_json(send, status, orjson.dumps(payload, default=_json_default), [(b"cache-control", b"no-store")])

    async def dispatch(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes | None) -> Payload:
        """One admin request → (status, JSON payload)."""
        try:
            self._authorize(headers)
            if raw is None:
                raise GatewayError(413, f"The request body is larger than {MAX_BODY // 1024} KiB.")
            return await self._route(method, [p for p in path.split("/") if p][1:], query, raw)
        except GatewayError as err:
            return err.status, _error(err.status, err.message)
        except ValidationError as exc:
            return 400, _error(400, _validation_message(exc))
        except KeyNotFound as exc:
            return 404, _error(404, str(exc.args[0]))
        except KeyConflict as exc:
            return 409, _error(409, str(exc))
        except Exception:  # noqa: BLE001 - the admin caller still gets JSON
            log.exception("admin request %s %s failed", method, path)
            return 500, {"error": {"message": "spendgate failed to handle this admin request; see its log.", "type": "server_error"}}

    def _authorize(self, headers: dict[str, str]) -> None:
        if self._admin_key is None:
            raise GatewayError(403, f"admin API disabled: set {self.key_env}")
        presented = presented_key(headers)
        if not presented:
            raise GatewayError(401, "Missing admin key: send 'Authorization: Bearer <admin key>'.")
        if not hmac.compare_digest(presented.encode(), self._admin_key) or self.keys.is_virtual_key(presented):
            raise GatewayError(401, "Invalid admin key (virtual keys do not open the admin API).")

    async def _route(self, method: str, parts: list[str], query: dict[str, str], raw: bytes) -> Payload:
        if parts[:1] == ["keys"]:
            if self.store is None:
                raise GatewayError(501, "Managed keys need a SQLite state file (state.url: sqlite:///spendgate-state.db).")
            store = self.store
            rest = parts[1:]
            if not rest:
                if method == "POST":
                    return await self._create(_body(raw))
                if method == "GET":
                    return await self._list(query)
                return _not_allowed(method)
            key_id = rest[0]
            if len(rest) == 1:
                if method == "GET":
                    return 200, await self._run(lambda: store.get(key_id).to_json(self.clock()))
                if method == "PATCH":
                    return await self._update(key_id, _body(raw))
                return _not_allowed(method)
            if len(rest) == 2 and rest[1] in ("rotate", "revoke"):
                if method != "POST":
                    return _not_allowed(method)
                if rest[1] == "rotate":
                    return await self._rotate(key_id, _body(raw, optional=True))
                return 200, await self._run(lambda: store.revoke(key_id).to_json(self.clock()))
        if parts[:1] == ["budgets"]:
            if parts[1:] == [] and method == "GET":
                return await self._budget_status()
            if parts[1:] == ["burst"] and method == "POST":
                return await self._burst(_body(raw))
            if parts[1:] in ([], ["burst"]):
                return _not_allowed(method)
        if parts[:1] == ["cache"]:
            if parts[1:] == [] and method == "GET":
                return 200, self._cache_admin().status()
            if parts[1:] == ["flush"] and method == "POST":
                return self._cache_flush(_body(raw))
            if parts[1:] in ([], ["flush"]):
                return _not_allowed(method)
        if parts == ["routing"]:
            if method == "GET":
                return 200, self._routing_status()
            return _not_allowed(method)
        raise GatewayError(404, f"Unknown admin endpoint: {method} /admin/{'/'.join(parts)}")

    @property
    def _store(self) -> KeyStore:
        assert self.store is not None  # checked when the route was chosen
        return self.store

    async def _run(self, work: Callable[[], Any]) -> Any:
        """Store calls touch SQLite: keep them off the event loop."""
        return await asyncio.to_thread(work)

    # ---- keys -------------------------------------------------------------------------

    async def _create(self, body: dict[str, Any]) -> Payload:
        spec = KeyCreate.model_validate(body)
        self._check_tags(spec)
        record, secret = await self._run(lambda: self._store.create(spec))
        log.info("created key %s (%s)", record.id, record.name)
        return 201, {**record.to_json(self.clock()), "secret": secret}

    async def _list(self, query: dict[str, str]) -> Payload:
        revoked = query.get("revoked")
        if revoked not in (None, "true", "false", "1", "0"):
            raise GatewayError(400, "revoked: use true or false")
        flag = None if revoked is None else revoked in ("true", "1")
        records = await self._run(lambda: self._store.list(team=query.get("team") or None, revoked=flag))
        now = self.clock()
        return 200, {"object": "list", "data": [r.to_json(now) for r in records]}

    async def _update(self, key_id: str, body: dict[str, Any]) -> Payload:
        fixed = sorted(_READ_ONLY & body.keys())
        if fixed:
            hint = f"; rotate the key (POST /admin/keys/{key_id}/rotate) for a new secret" if "secret" in fixed else ""
            raise GatewayError(400, f"read-only fields cannot be changed: {', '.join(fixed)}{hint}")
        changes = KeyFields.model_validate(body)
        self._check_tags(changes)
        record = await self._run(lambda: self._store.update(key_id, changes))
        log.info("updated key %s: %s", key_id, ", ".join(sorted(changes.model_fields_set)))
        return 200, record.to_json(self.clock())

    async def _rotate(self, key_id: str, body: dict[str, Any]) -> Payload:
        grace = body.get("grace_s", body.get("grace", 0))
        try:
            grace_s = parse_duration(grace) if isinstance(grace, str) else float(grace)
        except (TypeError, ValueError):
            raise GatewayError(400, "grace_s: give seconds (e.g. 3600)") from None
        if grace_s < 0:
            raise GatewayError(400, "grace_s must not be negative")
        record, secret = await self._run(lambda: self._store.rotate(key_id, grace_s))
        log.info("rotated key %s (old secret valid for %gs)", key_id, grace_s)
        return 200, {**record.to_json(self.clock()), "secret": secret}

    def _check_tags(self, fields: KeyFields) -> None:
        validate_tags(fields.owner_tags(), self.tag_rules)

    # ---- cache (delegated) --------------------------------------------------------------

    def _cache_admin(self) -> CacheAdmin:
        if self.cache is None:
            raise GatewayError(501, "This gateway runs no response cache.")
        return self.cache

    def _cache_flush(self, body: dict[str, Any]) -> Payload:
        admin = self._cache_admin()
        unknown = sorted(set(body) - set(_FLUSH_FIELDS) - {"all"})
        if unknown:
            raise GatewayError(400, f"unknown fields: {', '.join(unknown)} (use {', '.join([*_FLUSH_FIELDS, 'all'])})")
        given = {k: v for k, v in body.items() if k in _FLUSH_FIELDS and v is not None}
        for name, value in given.items():
            if not isinstance(value, str) or not value:
                raise GatewayError(400, f"{name}: a non-empty string")
        everything = body.get("all", False)
        if not isinstance(everything, bool):
            raise GatewayError(400, "all: true or false")
        if everything and given:
            raise GatewayError(400, "all: true flushes everything; do not combine it with filters")
        if not everything and not given:
            raise GatewayError(400, "say what to flush: scope, feature, prompt_template, prompt_version, model, policy, or all: true")
        what = Invalidation(everything=everything, **{_FLUSH_FIELDS[k]: v for k, v in given.items()})
        return 200, {"flushed": admin.flush(what), "filter": {**given, "all": everything}}

    # ---- routing (delegated) ------------------------------------------------------------

    def _routing_status(self) -> dict[str, Any]:
        """Each deployment's health (see `Health.snapshot`), and each public
        model's balancing strategy and deployments."""
        router = self.router
        if router is None:
            raise GatewayError(501, "Routing status is not available: this gateway runs no router.")
        models = {
            m: {"strategy": router.strategy(m), "deployments": [d.name for d in router.deployments_of(m)]}
            for m in router.models()
        }
        return {"object": "routing.status", "deployments": router.health.snapshot(), "models": models}

    # ---- budgets (delegated) ------------------------------------------------------------

    def _budget_admin(self) -> BudgetAdmin:
        if self.budgets is None:
            raise GatewayError(501, "Budget administration is not available: this gateway runs no budget controls.")
        return self.budgets

    async def _budget_status(self) -> Payload:
        rows = await _maybe_await(self._budget_admin().budget_status())
        return 200, {"object": "list", "data": rows}

    async def _burst(self, body: dict[str, Any]) -> Payload:
        admin = self._budget_admin()
        unknown = sorted(set(body) - {"budget", "scope", "amount", "until", "reason"})
        if unknown:
            raise GatewayError(400, f"unknown fields: {', '.join(unknown)}")
        budget = body.get("budget")
        scope = body.get("scope") or {}
        if budget is not None and not isinstance(budget, str):
            raise GatewayError(400, "budget: a budget name, or null for every budget covering the scope")
        if not isinstance(scope, dict) or not all(isinstance(v, str) and v and v != "*" for v in scope.values()):
            raise GatewayError(400, "scope: an object of concrete values, e.g. {\"team\": \"search\"}")
        try:
            check_scope(scope)
        except ValueError as exc:
            raise GatewayError(400, f"scope: {exc}") from None
        amount = _amount(body.get("amount"))
        until = _until(body.get("until"), self.clock())
        reason = body.get("reason") or ""
        if not isinstance(reason, str):
            raise GatewayError(400, "reason: a string")
        try:
            result = await _maybe_await(admin.add_burst(budget, scope, amount, until, reason))
        except LookupError as exc:
            raise GatewayError(404, str(exc.args[0] if exc.args else exc)) from None
        except ValueError as exc:
            raise GatewayError(400, str(exc)) from None
        log.info("burst grant: +%s USD to %s %s until %s (%s)", amount, budget or "every budget of", scope, until.isoformat(), reason)
        return 201, result


def _amount(value: Any) -> Decimal:
    try:
        amount = Decimal(str(value).strip().lstrip("+$")) if value is not None else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or amount <= 0:
        raise GatewayError(400, "amount: a positive number of USD, e.g. \"50\"")
    return amount


def _until(value: Any, now: float) -> datetime:
    if not isinstance(value, str):
        raise GatewayError(400, "until: an ISO 8601 time, e.g. \"2026-12-01T00:00:00Z\"")
    try:
        ts = parse_when(value, now)
    except ValueError as exc:
        raise GatewayError(400, f"until: {exc}") from None
    if ts <= now:
        raise GatewayError(400, "until: that time has already passed")
    return datetime.fromtimestamp(ts, UTC)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _body(raw: bytes, optional: bool = False) -> dict[str, Any]:
    if not raw.strip():
        if optional:
            return {}
        raise GatewayError(400, "The request needs a JSON object body.")
    return json_object(raw)


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error")}}


def _not_allowed(method: str) -> Payload:
    return 405, _error(405, f"Method {method} is not allowed here.")


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
