"""Identify stage: virtual key → principal, the models it may use, and the call's tags.

Keys come from two places: static keys in the config file, and managed keys
in the key store (created through the admin API, secrets kept as hashes).
Static keys are checked first. With neither kind configured and
`allow_any_key: true`, any key passes (the first-minute default, loudly
warned about); once a managed key exists, that mode ends.
"""

from __future__ import annotations

import hmac
import logging
import time
from functools import lru_cache

from spendgate.config import ApiKey, Config
from spendgate.controls.tags import header_tags, usable_tags, validate_tags
from spendgate.errors import GatewayError
from spendgate.keys.controls import KeyBudgets, ModelRule
from spendgate.keys.times import iso
from spendgate.keys.store import KeyStore
from spendgate.pipeline import Call
from spendgate.routing.policy import is_alias
from spendgate.wire import anthropic as anthropic_wire
from spendgate.wire import openai as openai_wire

log = logging.getLogger("spendgate.identify")

ANY_KEY_ID = "any-key"

__all__ = ["ANY_KEY_ID", "Identify", "KeyBudgets", "KeyRing", "default_tags", "presented_key"]


def presented_key(headers: dict[str, str]) -> str | None:
    """The key as either SDK sends it: `Authorization: Bearer …` or `x-api-key`."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("x-api-key") or headers.get("api-key")
    return key.strip() if key else None


def default_tags(key: ApiKey | None) -> dict[str, str]:
    """Tags a key gives its calls: its default tags, then its owner (team, user, service)."""
    if key is None:
        return {}
    tags = dict(key.tags)
    for name, value in (("team", key.team), ("user", key.user), ("service", key.service)):
        if value is not None:
            tags[name] = value
    return tags


def owner_tags(key: ApiKey | None) -> dict[str, str]:
    """The key's owner (team, user, service) and, when its defaults name one, its
    tenant: authoritative, never overridden by the request. A tenant's key must not
    reach another tenant's data (its cached answers) by sending another tenant tag;
    a shared app key without a tenant default sets the tenant per call."""
    if key is None:
        return {}
    out = {n: v for n, v in (("team", key.team), ("user", key.user), ("service", key.service)) if v is not None}
    tenant = key.tags.get("tenant")
    if tenant is not None:
        out["tenant"] = tenant
    return out


@lru_cache(maxsize=4096)
def _model_rule(patterns: tuple[str, ...]) -> ModelRule:
    return ModelRule(patterns)


def may_use(key: ApiKey | None, model: str) -> bool:
    return key is None or not key.allowed_models or _model_rule(tuple(key.allowed_models)).allows(model)


def check_model(key: ApiKey | None, model: str) -> None:
    """403 (`permission`) when the key may not use `model`."""
    if not may_use(key, model):
        assert key is not None
        raise GatewayError(
            403,
            f"This API key ({key.id}) may not use model '{model}'. Allowed models: {', '.join(key.allowed_models)}.",
            "permission",
            param="model",
        )


class KeyRing:
    """Authenticates a presented secret: static keys, then managed keys."""

    def __init__(self, config: Config, store: KeyStore | None = None) -> None:
        self._keys: dict[bytes, ApiKey] = {k.key.encode(): k for k in config.keys if k.key}
        self.store = store
        self._allow_any_configured = config.allow_any_key
        if config.allow_any_key and (self._keys or (store is not None and store.has_keys)):
            log.warning("allow_any_key is ignored: virtual keys exist, so every call needs a valid key")

    @property
    def allow_any(self) -> bool:
        """Any key passes only while no key of either kind exists."""
        return self._allow_any_configured and not self._keys and not (self.store is not None and self.store.has_keys)

    def is_virtual_key(self, secret: str) -> bool:
        """Whether a secret belongs to any virtual key, usable or not (the admin API refuses those)."""
        presented = secret.encode()
        if any(hmac.compare_digest(known, presented) for known in self._keys):
            return True
        return self.store is not None and self.store.check(secret, time.time()) is not None

    def authenticate(self, secret: str | None) -> ApiKey | None:
        """The key, or None in allow-any mode; raises 401 for unknown, revoked or expired keys."""
        if secret:
            presented = secret.encode()  # bytes: compare_digest refuses non-ASCII str
            # constant-time compare against each static key: the number of keys is small
            for known, key in self._keys.items():
                if hmac.compare_digest(known, presented):
                    return key
            if self.store is not None:
                found = self.store.check(secret, time.time())
                if found is not None:
                    if found.problem is None:
                        return found.entry.principal
                    raise GatewayError(401, _refusal(found.entry.record.id, found.problem, found.entry.record.expires_at), "authentication")
        if self.allow_any:
            return None
        if not secret:
            raise GatewayError(401, "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key'.", "authentication")
        raise GatewayError(401, "Invalid API key.", "authentication")


def _refusal(key_id: str, problem: str, expires_at: float | None) -> str:
    if problem == "revoked":
        return f"This API key ({key_id}) has been revoked."
    if problem == "expired":
        return f"This API key ({key_id}) expired at {iso(expires_at)}."
    return f"This API key ({key_id}) was rotated and this secret no longer works; use the new secret."


class Identify:
    """Stage: authenticate, check the model against the key, then merge tags
    (key defaults < body < headers)."""

    def __init__(self, config: Config, store: KeyStore | None = None) -> None:
        self.keys = KeyRing(config, store)
        self.key_controls = KeyBudgets(store)
        self.rules = config.tags

    async def __call__(self, call: Call) -> None:
        key = self.keys.authenticate(presented_key(call.headers))
        call.key = key
        call.key_id = key.id if key else ANY_KEY_ID
        if not is_alias(call.model):  # an alias is checked on what it resolves to (routing)
            check_model(key, call.model)
        # Body metadata is the client's own OpenAI/Anthropic data: keys that are
        # not valid tag names are simply not tags. Headers are spendgate's API:
        # a bad one is a clear 400.
        body_tags = usable_tags((anthropic_wire if call.wire == "anthropic" else openai_wire).request_tags(call.body), self.rules)
        headers = header_tags(call.headers)
        validate_tags(headers, self.rules)
        tags = default_tags(key)
        tags.update(body_tags)
        tags.update(headers)
        tags.update(owner_tags(key))  # a caller cannot move its spend to another owner
        call.tags = tags
