"""Managed virtual keys: the store, authentication, the key ring, the identify
stage, the key's own controls, and the admin API's handler in-process."""

from __future__ import annotations

import hmac
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from spendgate.admin.api import AdminApi, admin_key_from
from spendgate.commands.budgets import burst_body
from spendgate.commands.keys import parse_budget
from spendgate.config import Config
from spendgate.controls.identify import Identify, KeyRing
from spendgate.controls.schema import AdminConfig, Budget, Cap, RateLimit
from spendgate.errors import GatewayError
from spendgate.keys.model import KeyBudget, KeyCreate, KeyFields
from spendgate.keys.times import iso, parse_duration, parse_when
from spendgate.keys.store import KeyConflict, KeyNotFound, KeyStore
from spendgate.pipeline import Call

NOW = 1_800_000_000.0  # 2027-01-15


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = KeyStore(str(tmp_path / "state.db"))
    yield s
    s.close()


def make(store: KeyStore, now: float = NOW, **fields: Any) -> tuple[Any, str]:
    return store.create(KeyCreate(name=fields.pop("name", "bot"), **fields), now=now)


def call(model: str = "gpt-4o-mini", headers: dict[str, str] | None = None, body: dict[str, Any] | None = None) -> Call:
    body = body or {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return Call(wire="openai", endpoint="chat.completions", body=body, raw_body=orjson.dumps(body), headers=headers or {}, model=model)


# ---- the store ----------------------------------------------------------------------------


def test_create_then_authenticate(store: KeyStore) -> None:
    rec, secret = make(store, name="faq-bot", team="search", user="ana", service="faq", tags={"feature": "faq"})
    assert secret.startswith("sk-sg-") and len(secret) > 40
    assert rec.id.startswith("key_") and len(rec.id) == 16
    assert rec.prefix == secret[:10]
    assert (rec.team, rec.user, rec.service, rec.tags) == ("search", "ana", "faq", {"feature": "faq"})
    assert rec.created_at == rec.updated_at == NOW
    found = store.authenticate(secret, NOW + 1)
    assert found is not None and found.id == rec.id
    assert store.authenticate(secret + "x", NOW) is None
    assert store.authenticate("sk-sg-" + "A" * 43, NOW) is None
    _, other = make(store, name="other")
    assert other != secret and store.authenticate(other, NOW).id != rec.id  # type: ignore[union-attr]


def test_secret_is_never_stored_only_its_hash(tmp_path: Path) -> None:
    s = KeyStore(str(tmp_path / "state.db"))
    rec, first = make(s, name="k")
    _, second = s.rotate(rec.id, grace_s=60, now=NOW + 5)
    s.close()
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert data, "the state file exists"
    for secret in (first, second):
        assert secret.encode() not in data
        assert secret[6:].encode() not in data  # not even the random part
    import hashlib

    assert hashlib.sha256(first.encode()).hexdigest().encode() in data  # what is kept instead


def test_secret_not_in_records_or_listings(store: KeyStore) -> None:
    rec, secret = make(store)
    blob = orjson.dumps([r.to_json(NOW) for r in store.list()]) + orjson.dumps(store.get(rec.id).to_json(NOW))
    assert secret.encode() not in blob and rec.prefix.encode() in blob


def test_authentication_uses_constant_time_compare(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _, secret = make(store)
    seen: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert store.authenticate(secret, NOW) is not None
    assert len(seen) == 1 and seen[0][0] == seen[0][1] and len(seen[0][0]) == 64  # hash against hash


def test_authentication_reads_no_database(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _, secret = make(store)

    class Boom:
        def execute(self, *a: Any) -> None:
            raise AssertionError("the hot path touched SQLite")

    monkeypatch.setattr(store, "_db", Boom())
    assert store.authenticate(secret, NOW) is not None


def test_update_changes_fields_but_not_the_secret(store: KeyStore) -> None:
    rec, secret = make(store, team="search", rpm=10, budget=KeyBudget(limit=Decimal("200"), period="month"))
    changes = KeyFields.model_validate({"team": "ads", "rpm": None, "allowed_models": ["gpt-4o-mini", "claude-haiku*"], "tags": {"feature": "x"}})
    new = store.update(rec.id, changes, now=NOW + 10)
    assert (new.team, new.rpm, new.allowed_models, new.tags) == ("ads", None, ("gpt-4o-mini", "claude-haiku*"), {"feature": "x"})
    assert new.budget is not None and new.budget.limit == Decimal("200")  # untouched: not sent
    assert new.updated_at == NOW + 10 and new.created_at == NOW and new.prefix == rec.prefix
    assert store.authenticate(secret, NOW + 11).team == "ads"  # type: ignore[union-attr]  # index updated at once
    cleared = store.update(rec.id, KeyFields.model_validate({"budget": None}))
    assert cleared.budget is None
    with pytest.raises(KeyNotFound):
        store.update("key_000000000000", KeyFields(team="x"))
    with pytest.raises(ValueError):
        store.update(rec.id, KeyFields.model_validate({"name": None}))


def test_rotate_keeps_old_secret_for_the_grace_period(store: KeyStore) -> None:
    rec, old = make(store)
    rotated, new = store.rotate(rec.id, grace_s=3600, now=NOW + 100)
    assert new != old and rotated.prefix == new[:10] and rotated.rotated_at == NOW + 100
    assert rotated.to_json(NOW + 101)["previous_secret_valid_until"] == iso(NOW + 3700)
    assert store.authenticate(old, NOW + 3699) is not None
    assert store.authenticate(new, NOW + 3699) is not None
    assert store.authenticate(old, NOW + 3700) is None
    assert store.check(old, NOW + 3700).problem == "rotated"  # type: ignore[union-attr]
    assert store.authenticate(new, NOW + 99999) is not None


def test_rotate_without_grace_stops_the_old_secret_at_once(store: KeyStore) -> None:
    rec, old = make(store)
    _, mid = store.rotate(rec.id, grace_s=3600, now=NOW)
    _, new = store.rotate(rec.id, grace_s=0, now=NOW + 10)  # e.g. a leak: every older secret stops
    assert store.authenticate(old, NOW + 10) is None
    assert store.authenticate(mid, NOW + 10) is None
    assert store.authenticate(new, NOW + 10) is not None
    assert store.get(rec.id).to_json(NOW + 10)["previous_secret_valid_until"] is None


def test_revoke_stops_every_secret_and_is_final(store: KeyStore) -> None:
    rec, old = make(store)
    _, new = store.rotate(rec.id, grace_s=3600, now=NOW)
    revoked = store.revoke(rec.id, now=NOW + 5)
    assert revoked.revoked_at == NOW + 5 and revoked.status(NOW + 5) == "revoked"
    for secret in (old, new):
        assert store.authenticate(secret, NOW + 6) is None
        assert store.check(secret, NOW + 6).problem == "revoked"  # type: ignore[union-attr]
    assert store.revoke(rec.id, now=NOW + 50).revoked_at == NOW + 5  # twice: first time kept
    with pytest.raises(KeyConflict):
        store.rotate(rec.id)
    with pytest.raises(KeyNotFound):
        store.revoke("key_nope")
    assert [r.id for r in store.list(revoked=True)] == [rec.id] and store.list(revoked=False) == []


def test_expired_keys_stop_working(store: KeyStore) -> None:
    rec, secret = make(store, expires_at=datetime.fromtimestamp(NOW + 60, UTC))
    assert store.authenticate(secret, NOW + 59) is not None
    assert store.authenticate(secret, NOW + 60) is None
    assert store.check(secret, NOW + 60).problem == "expired"  # type: ignore[union-attr]
    assert store.get(rec.id).status(NOW + 61) == "expired"


def test_list_filters_by_team(store: KeyStore) -> None:
    a, _ = make(store, name="a", team="search")
    make(store, name="b", team="ads")
    assert [r.id for r in store.list(team="search")] == [a.id]
    assert len(store.list()) == 2


def test_changes_by_another_process_are_picked_up(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = KeyStore(path)
    try:
        assert store.poll() is False  # first poll: keys unchanged since this store loaded them
        assert store.poll() is False  # nothing changed: no reload
        script = textwrap.dedent(
            f"""
            from spendgate.keys.model import KeyCreate
            from spendgate.keys.store import KeyStore
            s = KeyStore({path!r})
            rec, secret = s.create(KeyCreate(name="from-elsewhere", team="ops"))
            print(rec.id, secret)
            s.close()
            """
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        key_id, secret = out.split()
        assert store.authenticate(secret) is None  # not seen yet: the index is memory
        assert store.poll() is True
        assert store.authenticate(secret).id == key_id  # type: ignore[union-attr]
        assert store.poll() is False
        # a revocation elsewhere, seen by the watcher thread within its interval
        store.start_watching(interval_s=0.05)
        other = KeyStore(path)
        other.revoke(key_id)
        other.close()
        deadline = time.monotonic() + 5
        while store.authenticate(secret) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.authenticate(secret) is None
        assert store.check(secret, time.time()).problem == "revoked"  # type: ignore[union-attr]
    finally:
        store.close()


def test_own_writes_do_not_trigger_a_reload(store: KeyStore) -> None:
    store.poll()
    make(store)
    assert store.poll() is False  # generation already current


def test_counters_written_by_others_in_the_same_file_do_not_reload_keys(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = KeyStore(path)
    try:
        make(store)
        store.poll()
        import sqlite3

        con = sqlite3.connect(path)
        con.execute("CREATE TABLE counters (name TEXT, amount TEXT)")
        con.execute("INSERT INTO counters VALUES ('x', '1')")
        con.commit()
        con.close()
        assert store.poll() is False
        assert len(store.list()) == 1
    finally:
        store.close()


def test_a_file_from_the_first_key_schema_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    from spendgate.keys.secrets import hash_secret

    path = tmp_path / "state.db"
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE api_keys_meta (singleton INTEGER PRIMARY KEY, schema_version INTEGER NOT NULL, generation INTEGER NOT NULL);
        INSERT INTO api_keys_meta VALUES (1, 1, 1);
        CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, prefix TEXT NOT NULL, owner_team TEXT, owner_user TEXT,
            owner_service TEXT, tags TEXT NOT NULL DEFAULT '{}', allowed_models TEXT NOT NULL DEFAULT '[]', budget TEXT, rpm INTEGER,
            tpm INTEGER, concurrency INTEGER, max_tokens INTEGER, expires_at REAL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
            revoked_at REAL, rotated_at REAL);
        CREATE TABLE api_key_secrets (secret_hash TEXT PRIMARY KEY, key_id TEXT NOT NULL, created_at REAL NOT NULL, retires_at REAL);
        """
    )
    con.execute("INSERT INTO api_keys (id, name, prefix, owner_team, created_at, updated_at) VALUES ('key_0000000000aa', 'old', 'sk-sg-old', 'ops', 1, 1)")
    con.execute("INSERT INTO api_key_secrets VALUES (?, 'key_0000000000aa', 1, NULL)", (hash_secret("sk-sg-old-secret"),))
    con.commit()
    con.close()
    store = KeyStore(str(path))
    try:
        assert store.authenticate("sk-sg-old-secret").team == "ops"  # type: ignore[union-attr]
        rec, secret = make(store)
        assert store.authenticate(secret) is not None and len(store.list()) == 2
    finally:
        store.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE api_keys_meta SET schema_version = 99")
    con.commit()
    con.close()
    with pytest.raises(RuntimeError, match="newer"):
        KeyStore(str(path))


# ---- validation ----------------------------------------------------------------------


def test_key_fields_validation() -> None:
    with pytest.raises(ValidationError):
        KeyCreate.model_validate({"name": "x", "allowed_models": ["*mini"]})
    with pytest.raises(ValidationError):
        KeyCreate.model_validate({"name": "x", "rpm": 0})
    with pytest.raises(ValidationError):
        KeyCreate.model_validate({"name": "x", "budget": {"limit": "10"}})  # no window
    with pytest.raises(ValidationError):
        KeyCreate.model_validate({"name": "x", "budget": {"limit": "10", "period": "month", "timezone": "Mars/Base"}})
    with pytest.raises(ValidationError):
        KeyCreate.model_validate({"name": "x", "secret": "sk-sg-mine"})
    with pytest.raises(ValidationError):
        KeyCreate.model_validate({"team": "x"})  # name is required
    k = KeyCreate.model_validate({"name": "x", "expires_at": "2026-12-31", "budget": {"limit": "5", "rolling": "24h"}})
    assert k.expires_at == datetime(2026, 12, 31, tzinfo=UTC)


def test_time_parsing() -> None:
    assert parse_duration("1h") == 3600 and parse_duration("90") == 90 and parse_duration("2d") == 172800
    assert parse_when("2026-12-01", 0) == datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert parse_when("2026-12-01T10:00:00+02:00", 0) == datetime(2026, 12, 1, 8, tzinfo=UTC).timestamp()
    assert parse_when("30d", NOW) == NOW + 30 * 86400
    with pytest.raises(ValueError):
        parse_when("next tuesday", NOW)
    assert iso(datetime(2026, 12, 1, tzinfo=UTC).timestamp()) == "2026-12-01T00:00:00Z"


def test_cli_budget_and_burst_parsing() -> None:
    assert parse_budget("200/month") == {"limit": "200", "period": "month"}
    assert parse_budget("$12.50/day", "Europe/Berlin") == {"limit": "12.50", "period": "day", "timezone": "Europe/Berlin"}
    assert parse_budget("50/24h") == {"limit": "50", "rolling": "24h"}
    from spendgate.admin.client import AdminError

    with pytest.raises(AdminError):
        parse_budget("200 a month")
    import argparse

    args = argparse.Namespace(amount="+50", until="2026-12-01", budget=None, reason="launch", team="search", feature=None, user=None, tenant=None, key=None, model=None)
    assert burst_body(args, NOW - 10**8) == {
        "budget": None, "scope": {"team": "search"}, "amount": "50", "until": "2026-12-01T00:00:00Z", "reason": "launch"
    }


# ---- the key ring and the identify stage ----------------------------------------------------


def config(**kw: Any) -> Config:
    return Config.model_validate(kw)


def test_static_keys_first_then_managed(store: KeyStore) -> None:
    rec, secret = make(store, team="search")
    ring = KeyRing(config(keys=[{"key": "sk-static", "id": "static-1", "team": "ops"}]), store)
    assert ring.authenticate("sk-static").id == "static-1"  # type: ignore[union-attr]
    managed = ring.authenticate(secret)
    assert managed is not None and managed.id == rec.id and managed.team == "search" and managed.key == ""
    with pytest.raises(GatewayError) as e:
        ring.authenticate("sk-unknown")
    assert e.value.status == 401 and e.value.message == "Invalid API key."


def test_revoked_and_expired_keys_get_401_naming_why_without_the_secret(store: KeyStore) -> None:
    rec, secret = make(store)
    exp, exp_secret = make(store, name="old", expires_at=datetime(2020, 1, 1, tzinfo=UTC))
    ring = KeyRing(config(), store)
    store.revoke(rec.id)
    for s, word in ((secret, "revoked"), (exp_secret, "expired at 2020-01-01T00:00:00Z")):
        with pytest.raises(GatewayError) as e:
            ring.authenticate(s)
        assert e.value.status == 401 and e.value.kind == "authentication"
        assert word in e.value.message and s not in e.value.message and s[:10] not in e.value.message


def test_allow_any_only_while_no_keys_exist(store: KeyStore) -> None:
    ring = KeyRing(config(allow_any_key=True), store)
    assert ring.allow_any and ring.authenticate(None) is None and ring.authenticate("whatever") is None
    rec, secret = make(store)
    assert not ring.allow_any
    with pytest.raises(GatewayError):
        ring.authenticate("whatever")
    store.revoke(rec.id)  # revoking the last key must not reopen the gateway
    with pytest.raises(GatewayError):
        ring.authenticate(None)
    static = KeyRing(config(allow_any_key=True, keys=[{"key": "sk-a", "id": "a"}]), None)
    assert not static.allow_any
    assert KeyRing(config(allow_any_key=True), None).authenticate(None) is None  # no store at all


async def test_identify_merges_owner_and_tags_key_defaults_lowest(store: KeyStore) -> None:
    rec, secret = make(store, team="search", user="ana", service="faq-svc", tags={"feature": "faq", "environment": "prod"})
    stage = Identify(config(), store)
    c = call(headers={"authorization": f"Bearer {secret}", "x-spendgate-environment": "staging"})
    await stage(c)
    assert c.key_id == rec.id and c.key is not None and c.key.team == "search"
    assert c.tags == {"team": "search", "user": "ana", "service": "faq-svc", "feature": "faq", "environment": "staging"}
    body = {"model": "gpt-4o-mini", "messages": [], "metadata": {"feature": "body-feature"}}
    c2 = call(body=body, headers={"x-api-key": secret})
    await stage(c2)
    assert c2.tags["feature"] == "body-feature"


async def test_allowed_models_refused_with_403_naming_them(store: KeyStore) -> None:
    _, secret = make(store, allowed_models=["gpt-4o-mini", "claude-haiku*"])
    stage = Identify(config(), store)
    for ok in ("gpt-4o-mini", "claude-haiku-4-5"):
        await stage(call(ok, headers={"authorization": f"Bearer {secret}"}))
    with pytest.raises(GatewayError) as e:
        await stage(call("gpt-4o", headers={"authorization": f"Bearer {secret}"}))
    assert e.value.status == 403 and e.value.kind == "permission"
    assert "'gpt-4o'" in e.value.message and "gpt-4o-mini, claude-haiku*" in e.value.message
    static = Identify(config(keys=[{"key": "sk-s", "id": "s", "allowed_models": ["gpt-4o"]}]), None)
    with pytest.raises(GatewayError):
        await static(call("gpt-4o-mini", headers={"authorization": "Bearer sk-s"}))


async def test_key_controls_become_schema_objects_scoped_to_the_key(store: KeyStore) -> None:
    rec, secret = make(
        store, budget=KeyBudget(limit=Decimal("200"), period="month", timezone="Europe/Berlin"), rpm=60, tpm=100000, concurrency=4, max_tokens=1024
    )
    bare, bare_secret = make(store, name="bare")
    stage = Identify(config(keys=[{"key": "sk-static", "id": rec.id}]), store)  # same id on purpose
    c = call(headers={"authorization": f"Bearer {secret}"})
    await stage(c)
    controls = stage.key_controls
    [budget] = controls.budgets_for(c)
    assert isinstance(budget, Budget) and budget.name == f"key:{rec.id}" and budget.scope == {"key": rec.id}
    assert budget.limit == Decimal("200") and budget.window.period == "month" and budget.window.timezone == "Europe/Berlin"
    [limit] = controls.rate_limits_for(c)
    assert isinstance(limit, RateLimit) and (limit.rpm, limit.tpm, limit.concurrency) == (60, 100000, 4) and limit.scope == {"key": rec.id}
    [cap] = controls.caps_for(c)
    assert isinstance(cap, Cap) and cap.max_tokens == 1024 and cap.match == {"key": rec.id} and cap.name == f"key:{rec.id}"
    c2 = call(headers={"authorization": f"Bearer {bare_secret}"})
    await stage(c2)
    assert controls.budgets_for(c2) == [] and controls.rate_limits_for(c2) == [] and controls.caps_for(c2) == []
    c3 = call(headers={"authorization": "Bearer sk-static"})  # a static key never picks up a managed key's limits
    await stage(c3)
    assert c3.key_id == rec.id and controls.budgets_for(c3) == []
    store.update(rec.id, KeyFields.model_validate({"budget": {"limit": "300", "rolling": "24h"}}))
    [budget] = controls.budgets_for(c)
    assert budget.limit == Decimal("300") and budget.window.rolling_seconds == 86400


# ---- the admin handler in-process (a fake budget admin) ------------------------------------


class FakeBudgets:
    def __init__(self) -> None:
        self.grants: list[tuple[Any, ...]] = []

    async def add_burst(self, budget: str | None, scope: dict[str, str], amount: Decimal, until: datetime, reason: str) -> dict[str, Any]:
        if budget == "nope":
            raise LookupError("no budget named 'nope'")
        self.grants.append((budget, scope, amount, until, reason))
        return {"id": "burst_1", "budget": budget, "amount": str(amount)}

    def budget_status(self) -> list[dict[str, Any]]:
        return [{"name": "search-monthly", "scope": {"team": "search"}, "limit": Decimal("100"), "spent": Decimal("12.5")}]


ADMIN = "admin-secret-for-tests"


def admin_api(store: KeyStore | None, budgets: Any = None, admin_key: str | None = ADMIN, **cfg: Any) -> AdminApi:
    ring = KeyRing(config(**cfg), store)
    return AdminApi(store, ring, admin_key, budgets=budgets)


async def admin(api: AdminApi, method: str, path: str, body: Any = None, key: str | None = ADMIN, query: dict[str, str] | None = None) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    raw = b"" if body is None else orjson.dumps(body)
    return await api.dispatch(method, path, query or {}, headers, raw)


async def test_admin_key_required_and_virtual_keys_never_admin(store: KeyStore) -> None:
    api = admin_api(store)
    assert (await admin(api, "GET", "/admin/keys", key=None))[0] == 401
    status, body = await admin(api, "GET", "/admin/keys", key="wrong")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    _, secret = make(store)
    assert (await admin(api, "GET", "/admin/keys", key=secret))[0] == 401
    assert (await api.dispatch("GET", "/admin/keys", {}, {"x-api-key": ADMIN}, b""))[0] == 200
    status, body = await admin(admin_api(store, admin_key=None), "GET", "/admin/keys")
    assert status == 403 and body == {"error": {"message": "admin API disabled: set SPENDGATE_ADMIN_KEY", "type": "permission_error"}}
    # an admin key equal to a static virtual key is refused: the API stays closed
    clash = admin_api(store, admin_key="sk-static", keys=[{"key": "sk-static", "id": "s"}])
    assert (await admin(clash, "GET", "/admin/keys", key="sk-static"))[0] == 403


def test_admin_key_from_config_or_env() -> None:
    assert admin_key_from(AdminConfig(key="k1"), {}) == "k1"
    assert admin_key_from(AdminConfig(), {"SPENDGATE_ADMIN_KEY": "k2"}) == "k2"
    assert admin_key_from(AdminConfig(key_env="MY_ADMIN"), {"MY_ADMIN": "k3", "SPENDGATE_ADMIN_KEY": "no"}) == "k3"
    assert admin_key_from(AdminConfig(), {}) is None


async def test_admin_key_crud_in_process(store: KeyStore) -> None:
    api = admin_api(store)
    status, created = await admin(api, "POST", "/admin/keys", {"name": "bot", "team": "search", "budget": {"limit": "200", "period": "month"}})
    assert status == 201 and created["secret"].startswith("sk-sg-") and created["budget"] == {"limit": "200", "period": "month", "timezone": "UTC"}
    kid = created["id"]
    status, listed = await admin(api, "GET", "/admin/keys", query={"team": "search"})
    assert status == 200 and [k["id"] for k in listed["data"]] == [kid] and "secret" not in listed["data"][0]
    assert (await admin(api, "GET", "/admin/keys", query={"team": "ads"}))[1]["data"] == []
    status, body = await admin(api, "PATCH", f"/admin/keys/{kid}", {"secret": "sk-sg-mine"})
    assert status == 400 and "rotate" in body["error"]["message"]
    status, body = await admin(api, "PATCH", f"/admin/keys/{kid}", {"tags": {"Bad Name": "x"}})
    assert status == 400 and "Invalid tag name" in body["error"]["message"]
    status, body = await admin(api, "PATCH", f"/admin/keys/{kid}", {"rpm": "many"})
    assert status == 400 and body["error"]["message"].startswith("rpm:")
    status, body = await admin(api, "GET", "/admin/keys/key_missing")
    assert status == 404 and body["error"]["type"] == "not_found_error"
    assert (await admin(api, "DELETE", f"/admin/keys/{kid}"))[0] == 405
    assert (await admin(api, "GET", "/admin/nothing"))[0] == 404
    status, body = await admin(api, "POST", "/admin/keys", None)
    assert status == 400
    await admin(api, "POST", f"/admin/keys/{kid}/revoke")
    status, body = await admin(api, "POST", f"/admin/keys/{kid}/rotate", {"grace_s": 10})
    assert status == 409 and "revoked" in body["error"]["message"]


async def test_admin_budget_routes_delegate_to_the_budget_admin(store: KeyStore) -> None:
    fake = FakeBudgets()
    api = admin_api(store, budgets=fake)
    body = {"budget": None, "scope": {"team": "search"}, "amount": "50", "until": "2099-12-01T00:00:00Z", "reason": "launch"}
    status, result = await admin(api, "POST", "/admin/budgets/burst", body)
    assert status == 201 and result == {"id": "burst_1", "budget": None, "amount": "50"}
    [(budget, scope, amount, until, reason)] = fake.grants
    assert (budget, scope, amount, reason) == (None, {"team": "search"}, Decimal("50"), "launch")
    assert until == datetime(2099, 12, 1, tzinfo=UTC)
    status, listed = await admin(api, "GET", "/admin/budgets")
    assert status == 200 and listed["data"][0]["name"] == "search-monthly"
    raw = orjson.loads(orjson.dumps(listed, default=str))
    assert raw["data"][0]["limit"] == "100"
    for bad, word in (
        ({**body, "amount": "-5"}, "amount"),
        ({**body, "until": "2001-01-01"}, "passed"),
        ({**body, "scope": {"planet": "mars"}}, "scope"),
        ({**body, "scope": {"team": "*"}}, "scope"),
        ({**body, "extra": 1}, "unknown fields"),
    ):
        status, err = await admin(api, "POST", "/admin/budgets/burst", bad)
        assert status == 400 and word in err["error"]["message"], (bad, err)
    status, err = await admin(api, "POST", "/admin/budgets/burst", {**body, "budget": "nope"})
    assert status == 404 and "nope" in err["error"]["message"]
    assert (await admin(admin_api(store), "GET", "/admin/budgets"))[0] == 501  # no budget admin wired
    assert (await admin(api, "GET", "/admin/budgets", key="wrong"))[0] == 401


async def test_admin_over_asgi_with_query_and_content_length(store: KeyStore) -> None:
    import httpx

    api = admin_api(store)
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        r = await client.post("/admin/keys", json={"name": "k", "team": "ops"}, headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
        r = await client.get("/admin/keys", params={"revoked": "false"}, headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200 and len(r.json()["data"]) == 1
        r = await client.get("/admin/keys", params={"revoked": "maybe"}, headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 400


def test_allowed_models_match_versions_not_siblings() -> None:
    from spendgate.keys.controls import ModelRule

    rule = ModelRule(["claude-haiku", "gpt-4o", "o1", "gemini-*"])
    assert rule.allows("claude-haiku-4-5") and rule.allows("gpt-4o-2024-08-06") and rule.allows("gpt-4o")
    assert rule.allows("gemini-2.5-flash")
    assert not rule.allows("gpt-4o-mini") and not rule.allows("o1-pro") and not rule.allows("claude-sonnet-4-5")
