"""examples/budgets.yaml serves as documented: tags enforced, caps and budgets
applied, and the admin API lists the budgets."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from conftest import Process, free_port

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "admin-secret"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    cwd = tmp_path_factory.mktemp("budgets-example")
    port = free_port()
    env = {"SPENDGATE_ADMIN_KEY": ADMIN_KEY, "SEARCH_KEY": "sk-team-search", "SUPPORT_KEY": "sk-team-support"}
    p = Process(
        ["serve", "--config", str(ROOT / "examples" / "budgets.yaml"), "--port", str(port)],
        f"http://127.0.0.1:{port}/healthz",
        env=env,
        cwd=str(cwd),
    )
    yield f"http://127.0.0.1:{port}", cwd
    out = p.terminate()
    assert "Traceback" not in out, out


def ledger_row(cwd: Path, request_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        con = sqlite3.connect(cwd / "spendgate.db")
        con.row_factory = sqlite3.Row
        try:
            rows = con.execute("SELECT * FROM usage_events WHERE request_id = ?", (request_id,)).fetchall()
        except sqlite3.OperationalError:
            rows = []
        finally:
            con.close()
        if rows or time.monotonic() > deadline:
            assert len(rows) == 1
            return dict(rows[0])
        time.sleep(0.05)


def test_tagged_call_passes_with_its_controls_applied(example: tuple[str, Path]) -> None:
    url, cwd = example
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-team-search", max_retries=0)
    r = client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        max_tokens=2000,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-spendgate-tags": "feature=faq,user=ann"},
    )
    assert r.parse().choices[0].message.content
    assert "x-spendgate-missing-tags" not in r.headers
    # the tightest of the three budgets covering the call (company, team search, user ann): $20 a day
    assert r.headers["x-spendgate-budget-name"] == "per-user-daily"
    assert Decimal(r.headers["x-spendgate-budget-remaining"]) < 20
    row = ledger_row(cwd, r.headers["x-spendgate-request-id"])
    assert (row["team"], row["feature"], row["environment"], row["user"], row["key_id"]) == ("search", "faq", "prod", "ann", "search-prod")
    assert row["control_actions"] == "cap:faq-answers:max_tokens 2000->512"
    assert Decimal(row["cost"]) > 0
    assert (cwd / "spendgate-state.db").exists(), "the state file lands in the working directory"

    # prod wants a user too, but only records its absence
    r = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-spendgate-feature": "search"}
    )
    assert r.headers["x-spendgate-missing-tags"] == "user"
    assert ledger_row(cwd, r.headers["x-spendgate-request-id"])["missing_tags"] == "user"

    # the support team's key may use its allowed models only
    claude = anthropic.Anthropic(base_url=url, api_key="sk-team-support", max_retries=0)
    msg = claude.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}], extra_headers={"x-spendgate-tags": "feature=chat,user=bo"}
    )
    assert msg.content
    support = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-team-support", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        support.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-spendgate-tags": "feature=chat"})
    assert "may not use model 'gpt-4o'" in info.value.response.json()["error"]["message"]


def test_untagged_prod_call_is_refused(example: tuple[str, Path]) -> None:
    url, _ = example
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-team-search", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert info.value.response.json()["error"]["message"].startswith("Missing required tags: feature (required for environment 'prod').")
    claude = anthropic.Anthropic(base_url=url, api_key="sk-team-support", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as ainfo:
        claude.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert "Missing required tags: feature" in ainfo.value.response.json()["error"]["message"]


def test_classifier_cap_rejects_and_batch_calls_share_the_rate_limit(example: tuple[str, Path]) -> None:
    url, _ = example
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-team-search", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=100, messages=[{"role": "user", "content": "hi"}], extra_headers={"x-spendgate-feature": "classify"}
        )
    assert "above the cap 'classifier'" in info.value.response.json()["error"]["message"]
    r = client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "hi"}], extra_headers={"x-spendgate-tags": "feature=classify,priority=batch"}
    )
    assert r.usage.completion_tokens <= 16


def test_admin_endpoint_lists_the_budgets(example: tuple[str, Path]) -> None:
    url, _ = example
    # a call by a user, so the per-user budget has an instance
    openai.OpenAI(base_url=f"{url}/v1", api_key="sk-team-search", max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-spendgate-tags": "feature=faq,user=ann"}
    )
    assert httpx.get(f"{url}/admin/budgets").status_code == 401  # no admin key
    assert httpx.get(f"{url}/admin/budgets", headers={"Authorization": "Bearer sk-team-search"}).status_code == 401  # a virtual key
    resp = httpx.get(f"{url}/admin/budgets", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status_code == 200
    rows = {(b["name"], b["instance"]): b for b in resp.json()["data"]}
    assert {"company-monthly", "search-monthly", "per-user-daily"} == {name for name, _ in rows}
    company, search, ann = rows["company-monthly", "global"], rows["search-monthly", "team=search"], rows["per-user-daily", "user=ann"]
    assert (Decimal(company["limit"]), Decimal(search["limit"]), Decimal(ann["limit"])) == (5000, 1500, 20)
    assert (company["window"], search["window"], ann["window"]) == ("month (Europe/Berlin)", "month (Europe/Berlin)", "rolling 24h")
    assert company["window_start"].endswith(("+01:00", "+02:00")) and company["window_start"][8:19] == "01T00:00:00"  # local midnight on the 1st
    assert Decimal(search["spent"]) > 0 and Decimal(company["spent"]) >= Decimal(search["spent"])
    assert search["slowdown"] is None and Decimal(search["remaining"]) < 1500

    # the CLI a platform engineer uses shows the same
    out = subprocess.run(
        [sys.executable, "-m", "spendgate.cli", "budgets", "list", "--url", url, "--json"],
        env={**os.environ, "SPENDGATE_ADMIN_KEY": ADMIN_KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert {(b["name"], b["instance"]) for b in json.loads(out.stdout)} >= set(rows)
