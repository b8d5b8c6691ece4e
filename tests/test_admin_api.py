"""The admin API and the `keys`/`budgets` commands against a real gateway
process, with real SDK calls made with the keys they manage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import uvicorn

from conftest import Gateway, base_config, free_port, start_gateway

ADMIN = "sg-admin-test-9f2c1e"


def state_config(simulator: str, tmp: Path, state: Path | None = None) -> dict[str, Any]:
    cfg = base_config(simulator, tmp / "ledger.db")
    cfg["state"] = {"url": f"sqlite:///{state or tmp / 'state.db'}"}
    return cfg


@pytest.fixture(scope="module")
def gw(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("admin")
    g = start_gateway(tmp, state_config(simulator, tmp), env={"SPENDGATE_ADMIN_KEY": ADMIN})
    yield g
    g.process.terminate()


def api(gw: Gateway, method: str, path: str, body: Any = None, key: str | None = ADMIN) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{gw.url}/admin/{path}", json=body, headers=headers, timeout=10)


def create(gw: Gateway, **fields: Any) -> dict[str, Any]:
    r = api(gw, "POST", "keys", {"name": "test-key", **fields})
    assert r.status_code == 201, r.text
    return r.json()


def oai(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0)


def ant(gw: Gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def chat(gw: Gateway, key: str, model: str = "gpt-4o-mini") -> Any:
    return oai(gw, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello [[sim:output_tokens=5]]"}]
    )


def cli(*args: str, url: str | None = None, admin_key: str | None = ADMIN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPENDGATE_URL", "SPENDGATE_ADMIN_KEY")}
    if url:
        env["SPENDGATE_URL"] = url
    if admin_key:
        env["SPENDGATE_ADMIN_KEY"] = admin_key
    return subprocess.run([sys.executable, "-m", "spendgate.cli", *args], capture_output=True, text=True, env=env, timeout=60)


# ---- keys through the HTTP API, used through the SDKs ------------------------------------------


def test_created_key_works_and_attributes_the_ledger_row(gw: Gateway) -> None:
    key = create(gw, team="search", service="faq-svc", tags={"feature": "faq"})
    raw = chat(gw, key["secret"])
    assert raw.parse().choices[0].message.content
    [row] = gw.by_request(raw.headers["x-spendgate-request-id"])
    assert row["key_id"] == key["id"] and row["team"] == "search" and row["feature"] == "faq"
    assert json.loads(row["tags"]).get("service") == "faq-svc"
    assert Decimal(row["cost"]) > 0
    # the secret was shown once: never in a read
    assert key["secret"] not in api(gw, "GET", f"keys/{key['id']}").text
    assert key["secret"] not in api(gw, "GET", "keys").text


def test_revoked_key_gets_authentication_error_in_both_formats(gw: Gateway) -> None:
    key = create(gw, team="search")
    chat(gw, key["secret"])
    r = api(gw, "POST", f"keys/{key['id']}/revoke")
    assert r.status_code == 200 and r.json()["status"] == "revoked" and r.json()["revoked_at"]
    with pytest.raises(openai.AuthenticationError) as e:
        chat(gw, key["secret"])
    assert "revoked" in str(e.value) and key["secret"] not in str(e.value)
    with pytest.raises(anthropic.AuthenticationError) as a:
        ant(gw, key["secret"]).messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert "revoked" in str(a.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK warns about the model's age
def test_allowed_models_refused_with_permission_denied(gw: Gateway) -> None:
    key = create(gw, allowed_models=["gpt-4o-mini", "claude-haiku*"])
    chat(gw, key["secret"], "gpt-4o-mini")
    msg = ant(gw, key["secret"]).messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert msg.content
    with pytest.raises(openai.PermissionDeniedError) as e:
        chat(gw, key["secret"], "gpt-4o")
    assert "'gpt-4o'" in str(e.value) and "gpt-4o-mini, claude-haiku*" in str(e.value)
    with pytest.raises(anthropic.PermissionDeniedError):
        ant(gw, key["secret"]).messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}])


def test_rotate_with_grace_then_old_secret_stops(gw: Gateway) -> None:
    key = create(gw)
    old = key["secret"]
    r = api(gw, "POST", f"keys/{key['id']}/rotate", {"grace_s": 1.5})
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new != old and r.json()["prefix"] == new[:10] and r.json()["previous_secret_valid_until"]
    rotated_at = time.monotonic()
    chat(gw, old)  # within the grace period both work
    chat(gw, new)
    time.sleep(max(0.0, 1.7 - (time.monotonic() - rotated_at)))
    with pytest.raises(openai.AuthenticationError) as e:
        chat(gw, old)
    assert "rotated" in str(e.value)
    chat(gw, new)


def test_update_takes_effect_at_once(gw: Gateway) -> None:
    key = create(gw, allowed_models=["gpt-4o"])
    with pytest.raises(openai.PermissionDeniedError):
        chat(gw, key["secret"], "gpt-4o-mini")
    r = api(gw, "PATCH", f"keys/{key['id']}", {"allowed_models": [], "team": "ads"})
    assert r.status_code == 200 and r.json()["allowed_models"] == [] and r.json()["team"] == "ads"
    raw = chat(gw, key["secret"], "gpt-4o-mini")
    [row] = gw.by_request(raw.headers["x-spendgate-request-id"])
    assert row["team"] == "ads"


def test_expired_key_is_refused(gw: Gateway) -> None:
    key = create(gw, expires_at="2020-01-01")
    assert key["status"] == "expired"
    with pytest.raises(openai.AuthenticationError) as e:
        chat(gw, key["secret"])
    assert "expired" in str(e.value)


def test_unknown_key_refused_and_static_keys_still_work(gw: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        chat(gw, "sk-sg-not-a-real-key")
    chat(gw, "sk-test-search")


def test_admin_api_needs_the_admin_key(gw: Gateway) -> None:
    assert api(gw, "GET", "keys", key=None).status_code == 401
    r = api(gw, "GET", "keys", key="not-the-admin-key")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert api(gw, "GET", "keys", key="sk-test-search").status_code == 401  # a static virtual key
    managed = create(gw)
    assert api(gw, "GET", "keys", key=managed["secret"]).status_code == 401  # a managed one
    r = httpx.get(f"{gw.url}/admin/keys", headers={"x-api-key": ADMIN})
    assert r.status_code == 200 and any(k["id"] == managed["id"] for k in r.json()["data"])
    r = api(gw, "POST", "keys", {"name": "x", "rpm": -1})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("rpm:")


def test_admin_api_disabled_without_an_admin_key(simulator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPENDGATE_ADMIN_KEY", raising=False)
    g = start_gateway(tmp_path, state_config(simulator, tmp_path))
    try:
        r = api(g, "GET", "keys")
        assert r.status_code == 403
        assert r.json() == {"error": {"message": "admin API disabled: set SPENDGATE_ADMIN_KEY", "type": "permission_error"}}
        chat(g, "sk-test-search")  # the gateway itself works
    finally:
        g.process.terminate()


def test_second_gateway_on_the_same_state_file_sees_changes(gw: Gateway, simulator: str, tmp_path: Path) -> None:
    state = Path(gw.process.args[2]).parent / "state.db"  # the module gateway's state file
    assert state.exists()
    other = start_gateway(tmp_path, state_config(simulator, tmp_path, state), env={"SPENDGATE_ADMIN_KEY": ADMIN})
    try:
        key = create(gw, team="search")  # made on the first gateway
        deadline = time.monotonic() + 5
        while True:
            try:
                chat(other, key["secret"])
                break
            except openai.AuthenticationError:
                assert time.monotonic() < deadline, "the second gateway never saw the new key"
                time.sleep(0.1)
        api(gw, "POST", f"keys/{key['id']}/revoke")
        deadline = time.monotonic() + 5
        while True:
            try:
                chat(other, key["secret"])
            except openai.AuthenticationError as e:
                assert "revoked" in str(e)
                break
            assert time.monotonic() < deadline, "the second gateway never saw the revocation"
            time.sleep(0.1)
    finally:
        other.process.terminate()


# ---- the CLI against the running gateway ------------------------------------------------------


def test_cli_key_lifecycle(gw: Gateway) -> None:
    r = cli(
        "keys", "create", "--name", "faq-bot", "--team", "search", "--feature", "faq", "--user", "ana", "--service", "faq-svc",
        "--tag", "environment=prod", "--budget", "200/month", "--timezone", "Europe/Berlin", "--models", "gpt-4o-mini,claude-haiku*",
        "--rpm", "60", "--tpm", "100000", "--concurrency", "4", "--max-tokens", "1024", "--expires", "2099-12-31", "--json",
        url=gw.url,
    )
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["secret"].startswith("sk-sg-")
    assert (rec["team"], rec["user"], rec["service"]) == ("search", "ana", "faq-svc")
    assert rec["tags"] == {"feature": "faq", "environment": "prod"}
    assert rec["budget"] == {"limit": "200", "period": "month", "timezone": "Europe/Berlin"}
    assert rec["allowed_models"] == ["gpt-4o-mini", "claude-haiku*"]
    assert (rec["rpm"], rec["tpm"], rec["concurrency"], rec["max_tokens"]) == (60, 100000, 4, 1024)
    assert rec["expires_at"] == "2099-12-31T00:00:00Z"
    kid, secret = rec["id"], rec["secret"]
    raw = chat(gw, secret)
    [row] = gw.by_request(raw.headers["x-spendgate-request-id"])
    assert (row["key_id"], row["team"], row["feature"], row["environment"]) == (kid, "search", "faq", "prod")

    r = cli("keys", "list", "--team", "search", url=gw.url)
    assert r.returncode == 0 and kid in r.stdout and "$200/month (Europe/Berlin)" in r.stdout and secret not in r.stdout
    r = cli("keys", "show", kid, url=gw.url)
    assert r.returncode == 0 and "faq-bot" in r.stdout and secret not in r.stdout

    r = cli("keys", "update", kid, "--budget", "300/day", "--rpm", "none", "--untag", "environment", "--tag", "tier=gold", "--json", url=gw.url)
    assert r.returncode == 0, r.stderr
    upd = json.loads(r.stdout)
    assert upd["budget"] == {"limit": "300", "period": "day", "timezone": "UTC"} and upd["rpm"] is None and upd["tpm"] == 100000
    assert upd["tags"] == {"feature": "faq", "tier": "gold"}

    r = cli("keys", "rotate", kid, "--grace", "1h", url=gw.url)
    assert r.returncode == 0, r.stderr
    new = next(line.strip() for line in r.stdout.splitlines() if line.strip().startswith("sk-sg-"))
    assert "Store this secret now" in r.stdout and "old secret works until" in r.stdout
    chat(gw, secret)  # grace: the old one still works
    chat(gw, new)

    r = cli("keys", "revoke", kid, url=gw.url)
    assert r.returncode == 0 and "Revoked" in r.stdout
    for s in (secret, new):
        with pytest.raises(openai.AuthenticationError):
            chat(gw, s)
    r = cli("keys", "list", "--revoked", "--json", url=gw.url)
    assert kid in [k["id"] for k in json.loads(r.stdout)]


def test_cli_create_prints_the_secret_once_with_a_note(gw: Gateway) -> None:
    r = cli("keys", "create", "--name", "plain", url=gw.url)
    assert r.returncode == 0, r.stderr
    secret = next(line.strip() for line in r.stdout.splitlines() if line.strip().startswith("sk-sg-"))
    assert "Store this secret now" in r.stdout and "shown only this once" in r.stdout
    chat(gw, secret)


def test_cli_errors_are_clear(gw: Gateway) -> None:
    r = cli("keys", "list", url=f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "cannot reach the gateway" in r.stderr and "Traceback" not in r.stderr
    r = cli("keys", "list", url=gw.url, admin_key="wrong")
    assert r.returncode == 1 and "refused the admin key" in r.stderr
    r = cli("keys", "list", url=gw.url, admin_key=None)
    assert r.returncode == 1 and "no admin key" in r.stderr
    r = cli("keys", "show", "key_nope00000000", url=gw.url)
    assert r.returncode == 1 and "HTTP 404" in r.stderr
    r = cli("keys", "create", "--name", "x", "--budget", "lots", url=gw.url)
    assert r.returncode == 1 and "AMOUNT/PERIOD" in r.stderr
    r = cli("budgets", "burst", "--team", "search", "+50", "--until", "2030-01-01", "--budget", "no-such-budget", url=gw.url)
    assert r.returncode == 1 and "no-such-budget" in r.stderr


# ---- routing health -----------------------------------------------------------------------------


def test_routing_status_shows_failover_and_cooldown(gw: Gateway) -> None:
    r = api(gw, "GET", "routing")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "routing.status"
    assert data["models"]["ha-model"] == {"strategy": "ordered", "deployments": ["dead", "alive"]}
    fresh = data["deployments"]["an-haiku"]
    assert fresh["state"] == "healthy" and fresh["in_flight"] == 0 and fresh["recent_failures"] == 0
    assert set(fresh) >= {"cooldown_left_s", "latency_ewma_ms", "last_failure", "rpm", "rpm_used", "tpm", "tpm_used"}
    for _ in range(3):  # "dead" refuses connections: each call fails over to "alive"
        raw = chat(gw, "sk-test-search", "ha-model")
        rows = gw.by_request(raw.headers["x-spendgate-request-id"])
        assert [(row["deployment"], row["route_reason"]) for row in rows] == [("dead", "direct"), ("alive", "failover")]
    deps = api(gw, "GET", "routing").json()["deployments"]
    dead, alive = deps["dead"], deps["alive"]
    assert dead["state"] == "cooling" and dead["cooldown_left_s"] > 0  # three failures (allowed_fails) trip it
    assert dead["recent_failures"] == 3 and dead["last_failure"] == "connection"
    assert alive["state"] == "healthy" and alive["latency_ewma_ms"] > 0 and alive["latency_samples"] >= 3
    assert alive["in_flight"] == 0
    assert api(gw, "GET", "routing", key=None).status_code == 401
    assert api(gw, "POST", "routing", {}).status_code == 405

    r = cli("routing", "status", url=gw.url)
    assert r.returncode == 0, r.stderr
    dead_line = next(line for line in r.stdout.splitlines() if line.startswith("dead "))
    assert "cooling" in dead_line and "connection" in dead_line
    assert "not healthy: dead" in r.stdout
    r = cli("routing", "status", "--json", url=gw.url)
    assert r.returncode == 0 and json.loads(r.stdout)["deployments"]["dead"]["state"] == "cooling"


def test_routing_status_without_a_router() -> None:
    with admin_server(FakeBudgets()) as url:
        r = cli("routing", "status", url=url)
    assert r.returncode == 1 and "HTTP 501" in r.stderr and "no router" in r.stderr


# ---- the budgets command, against an admin API with a fake budget admin ----------------------


class FakeBudgets:
    def __init__(self) -> None:
        self.grants: list[dict[str, Any]] = []

    def add_burst(self, budget: str | None, scope: dict[str, str], amount: Decimal, until: datetime, reason: str) -> dict[str, Any]:
        grant = {"id": f"burst_{len(self.grants) + 1}", "budget": budget, "scope": scope, "amount": str(amount), "until": until.isoformat(), "reason": reason}
        self.grants.append(grant)
        return grant

    async def budget_status(self) -> list[dict[str, Any]]:
        return [
            {"name": "search-monthly", "scope": {"team": "search"}, "limit": "100", "burst": str(sum(Decimal(g["amount"]) for g in self.grants)), "spent": "12.5"}
        ]


@contextmanager
def admin_server(budgets: FakeBudgets) -> Iterator[str]:
    from spendgate.admin.api import AdminApi
    from spendgate.config import Config
    from spendgate.controls.identify import KeyRing

    app = AdminApi(None, KeyRing(Config()), ADMIN, budgets=budgets)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_cli_budget_burst_and_list() -> None:
    fake = FakeBudgets()
    with admin_server(fake) as url:
        r = cli("budgets", "burst", "--team", "search", "+50", "--until", "2099-12-01", "--reason", "launch week", url=url)
        assert r.returncode == 0, r.stderr
        assert "Granted +$50" in r.stdout and "team=search" in r.stdout
        [grant] = fake.grants
        assert grant["scope"] == {"team": "search"} and grant["amount"] == "50" and grant["budget"] is None
        assert grant["until"] == "2099-12-01T00:00:00+00:00" and grant["reason"] == "launch week"
        r = cli("budgets", "burst", "25", "--budget", "search-monthly", "--until", "7d", "--json", url=url)
        assert r.returncode == 0 and json.loads(r.stdout)["budget"] == "search-monthly"
        r = cli("budgets", "list", url=url)
        assert r.returncode == 0 and "search-monthly" in r.stdout and "team=search" in r.stdout and "75" in r.stdout
        r = cli("budgets", "list", "--json", url=url)
        assert json.loads(r.stdout)[0]["spent"] == "12.5"
        r = cli("budgets", "burst", "+50", "--until", "2099-12-01", url=url)
        assert r.returncode == 1 and "say what the burst is for" in r.stderr
        r = cli("budgets", "burst", "--team", "search", "+50", "--until", "2001-01-01", url=url)
        assert r.returncode == 1 and "passed" in r.stderr
        r = cli("keys", "list", url=url)  # this server has no key store
        assert r.returncode == 1 and "HTTP 501" in r.stderr
