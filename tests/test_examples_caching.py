"""examples/caching.yaml serves as its comments and docs/caching.md say: exact
and semantic hits within a tenant, never across tenants, a shared pool,
status and flushes through the CLI, savings in the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import openai
import yaml

from conftest import Process, free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "caching.yaml"
ADMIN = "admin-secret-example"


def ask(port: int, key: str, question: str) -> tuple[str, str, str]:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
    r = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", temperature=0, messages=[{"role": "user", "content": question}]
    )
    return r.headers["x-spendgate-cache"], r.headers["x-spendgate-cost"], r.parse().choices[0].message.content or ""


def cli(port: int, *args: str) -> str:
    env = {**os.environ, "SPENDGATE_ADMIN_KEY": ADMIN, "SPENDGATE_URL": f"http://127.0.0.1:{port}"}
    out = subprocess.run([sys.executable, "-m", "spendgate.cli", *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_caching_guide_quotes_the_example() -> None:
    text = EXAMPLE.read_text()
    cache_block = text[text.index("cache:\n") :]
    quoted = (ROOT / "docs" / "caching.md").read_text()
    # the guide's config block is the example's cache section, comments included (minus the long ones)
    doc_block = quoted[quoted.index("```yaml\ncache:\n") + len("```yaml\n") : quoted.index("```", quoted.index("```yaml\ncache:\n") + 7)]
    assert yaml.safe_load(doc_block) == yaml.safe_load(cache_block)


def test_caching_example_runs_as_documented(tmp_path: Path) -> None:
    port = free_port()
    p = Process(
        ["serve", "--config", str(EXAMPLE), "--port", str(port)],
        f"http://127.0.0.1:{port}/healthz",
        env={"SPENDGATE_ADMIN_KEY": ADMIN},
        cwd=str(tmp_path),
    )
    try:
        first = ask(port, "sk-acme-support", "How do I reset my password?")
        assert first[0] == "miss" and Decimal(first[1]) > 0
        again = ask(port, "sk-acme-support", "How do I reset my password?")
        assert again[0] == "exact" and again[1] == "0" and again[2] == first[2]
        reworded = ask(port, "sk-acme-support", "reset my password - how do I")
        assert reworded[0] == "semantic" and reworded[2] == first[2]
        assert ask(port, "sk-globex-support", "How do I reset my password?")[0] == "miss"  # another tenant
        assert ask(port, "sk-acme-support", "How do I change my email address?")[0] == "miss"  # another question

        docs = ask(port, "sk-docs-bot", "Which regions are supported?")
        assert docs[0] == "miss" and ask(port, "sk-docs-bot", "Which regions are supported?")[0] == "exact"

        status = json.loads(cli(port, "cache", "status", "--json"))
        assert status["by_scope"] == {"tenant=acme": 2, "tenant=globex": 1, "pool:public-docs": 1}
        assert "Flushed 3 stored answers." in cli(port, "cache", "flush", "--feature", "faq", "--version", "v1")
        assert ask(port, "sk-acme-support", "How do I reset my password?")[0] == "miss"
    finally:
        p.terminate()

    time.sleep(0.1)
    report = json.loads(
        subprocess.run(
            [sys.executable, "-m", "spendgate.cli", "report", "--ledger", str(tmp_path / "spendgate.db"), "--by", "tenant,cache_status", "--format", "json"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    )  # fmt: skip
    rows = {(r["tenant"], r["cache_status"]): r for r in report["rows"]}
    acme_hits = [rows[("acme", s)] for s in ("exact", "semantic")]
    assert all(r["requests"] == 1 and Decimal(r["cost"]) == 0 for r in acme_hits)
    # each hit saved exactly what the first answer cost at list price
    first_cost = Decimal(first[1])
    assert [Decimal(r["saved"]) for r in acme_hits] == [first_cost, first_cost]
    assert report["total"]["cache_hits"] == 3 and Decimal(report["total"]["saved"]) == 2 * first_cost + Decimal(docs[1])
