"""examples/routing.yaml serves as its comments and docs/routing.md say: the FAQ
cascade keeps a good cheap answer and escalates a refusal, a failing model falls
back to another provider, `policy explain` and the report tell what happened."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import yaml

from conftest import Process, free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "routing.yaml"


def test_the_routing_guide_quotes_the_example() -> None:
    text = EXAMPLE.read_text()
    example = yaml.safe_load(text)
    guide = (ROOT / "docs" / "routing.md").read_text()
    start = guide.index("```yaml\nrouting:\n") + len("```yaml\n")
    assert yaml.safe_load(guide[start : guide.index("```", start)]) == {"routing": example["routing"]}
    start = guide.index("```yaml\ndeployments:\n") + len("```yaml\n")
    assert yaml.safe_load(guide[start : guide.index("```", start)]) == {"deployments": example["deployments"]}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spendgate.cli", *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=os.environ)


def rows(db: Path, request_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        con = sqlite3.connect(db)
        con.row_factory = sqlite3.Row
        try:
            found = [dict(r) for r in con.execute("SELECT * FROM usage_events WHERE request_id = ? ORDER BY attempt", (request_id,))]
        except sqlite3.OperationalError:
            found = []
        finally:
            con.close()
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_routing_example_runs_as_documented(tmp_path: Path) -> None:
    port = free_port()
    p = Process(["serve", "--config", str(EXAMPLE), "--port", str(port)], f"http://127.0.0.1:{port}/healthz", cwd=str(tmp_path))
    db = tmp_path / "spendgate.db"
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-support-bot", max_retries=0)
    faq = {"x-spendgate-tags": "feature=faq"}
    try:
        # a FAQ question: the small model's answer passes the checks and is kept
        r = client.chat.completions.with_raw_response.create(
            model="auto", extra_headers=faq, messages=[{"role": "user", "content": "How do I reset my password?"}]
        )
        [kept] = rows(db, r.headers["x-spendgate-request-id"], 1)
        assert (kept["model_used"], kept["route_reason"], kept["saved_by"]) == ("gpt-4o-mini", "cascade", "routing")
        assert Decimal(kept["saved"]) > 0  # cheaper than gpt-4.1 for the same tokens
        # the small model refuses: escalated to the flagship, both attempts paid and recorded
        r = client.chat.completions.with_raw_response.create(
            model="auto", extra_headers=faq, messages=[{"role": "user", "content": "Refund policy? [[sim:reply@gpt-4o-mini=refusal]]"}]
        )
        cheap, strong = rows(db, r.headers["x-spendgate-request-id"], 2)
        assert (cheap["model_used"], strong["model_used"], strong["route_reason"]) == ("gpt-4o-mini", "gpt-4.1", "cascade-escalation")
        assert Decimal(r.headers["x-spendgate-cost"]) == Decimal(cheap["cost"]) + Decimal(strong["cost"])
        # gpt-4o-mini fails in both regions: claude-haiku-4-5 answers
        r = client.chat.completions.with_raw_response.create(
            model="tier:small", messages=[{"role": "user", "content": "Hi [[sim:fault@gpt-4o-mini=500]]"}]
        )
        assert r.parse().choices[0].message.content
        attempts = rows(db, r.headers["x-spendgate-request-id"], 5)
        assert attempts[-1]["deployment"] == "haiku" and attempts[-1]["status"] == "ok"
        assert {a["deployment"] for a in attempts[:-1]} == {"mini-east", "mini-west"}
    finally:
        out = p.terminate()
    assert "Traceback" not in out
    explained = cli("policy", "explain", "--config", str(EXAMPLE), "--feature", "faq", "--json", cwd=tmp_path)
    assert explained.returncode == 0, explained.stderr
    plan = json.loads(explained.stdout)
    assert plan["target"]["label"] == "cascade:faq" and len(plan["steps"]) == 2
    report = cli("report", "--config", str(EXAMPLE), "--by", "route_reason", "--format", "json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    total = data["total"]
    saved = sqlite3.connect(db).execute("SELECT saved FROM usage_events WHERE saved_by LIKE '%routing%'").fetchall()
    assert Decimal(total["routing_saved"]) == sum(Decimal(x) for (x,) in saved)
    assert total["escalation_rate"] == 0.5  # 1 of the 2 cascade requests escalated
