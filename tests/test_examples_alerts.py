"""examples/alerts.yaml serves as docs/alerts.md says: a real gateway with the
simulator, a call above the single_call threshold reaches the webhook within
moments (with the exact cost the ledger holds), an unpriced model is reported
once, and state and history land in the ledger."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from conftest import Process, free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "alerts.yaml"


def test_the_alerts_guide_quotes_the_example() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    guide = (ROOT / "docs" / "alerts.md").read_text()
    start = guide.index("```yaml\nalerts:\n") + len("```yaml\n")
    assert yaml.safe_load(guide[start : guide.index("```", start)]) == {"alerts": example["alerts"]}
    for kind in ("daily_spend", "daily_spend_vs_average", "single_call", "budget_utilization", "forecast_over_budget",
                 "untagged_share", "unpriced_model", "cache_hit_rate_drop", "error_rate_spike", "cost_slo"):  # fmt: skip
        assert f"`{kind}`" in guide


class Hook:
    """A local webhook receiver (stdlib HTTP server on a thread)."""

    def __init__(self) -> None:
        received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/spendgate"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, rule: str, timeout: float = 10.0) -> list[tuple[dict[str, str], dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.received if r[1]["rule"] == rule]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no {rule!r} alert arrived; got {[r[1]['rule'] for r in self.received]}")


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.server.shutdown()


def test_example_gateway_sends_a_big_call_to_the_webhook(tmp_path: Path, hook: Hook) -> None:
    port = free_port()
    env = {"ALERT_WEBHOOK_URL": hook.url, "ALERT_WEBHOOK_TOKEN": "hook-token-123"}
    p = Process(["serve", "--config", str(EXAMPLE), "--port", str(port)], f"http://127.0.0.1:{port}/healthz", env=env, cwd=str(tmp_path))
    db = tmp_path / "spendgate.db"
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-team-search", max_retries=0)
        # a cheap call: no alert
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi [[sim:output_tokens=5]]"}])
        # 16,000 output tokens of gpt-4o: about $0.16, above big-call's $0.10
        r = client.chat.completions.with_raw_response.create(
            model="gpt-4o", max_tokens=16000, messages=[{"role": "user", "content": "A long report [[sim:output_tokens=16000]]"}]
        )
        cost = Decimal(r.headers["x-spendgate-cost"])
        assert cost > Decimal("0.10")
        [(headers, body)] = hook.wait_for("big-call")
        assert headers["Authorization"] == "Bearer hook-token-123"
        assert (body["status"], body["subject"], body["threshold"]) == ("firing", "gpt-4o", "0.10")
        assert Decimal(body["value"]) == cost  # the exact cost the gateway charged
        assert "long report" not in json.dumps(body)  # prompt text never leaves in an alert
        # a second big call within the cooldown: no second notification
        client.chat.completions.create(
            model="gpt-4o", max_tokens=16000, messages=[{"role": "user", "content": "Another [[sim:output_tokens=16000]]"}]
        )
        # a model with no price: announced once
        labs = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-team-labs", max_retries=0)
        for _ in range(2):
            labs.chat.completions.create(model="acme-labs-llm", messages=[{"role": "user", "content": "hi"}])
        [(_, unpriced)] = hook.wait_for("unpriced")
        assert unpriced["subject"] == "acme-labs-llm" and "no price" in unpriced["message"]
        time.sleep(0.5)
        assert len([b for _, b in hook.received if b["rule"] == "big-call"]) == 1
    finally:
        out = p.terminate()
    assert "Traceback" not in out, out
    assert "hook-token-123" not in out and hook.url not in out
    con = sqlite3.connect(db)
    try:
        states = dict(con.execute("SELECT rule || ':' || subject, status FROM alert_state").fetchall())
        history = con.execute("SELECT rule, event, notifier FROM alert_history ORDER BY id").fetchall()
    finally:
        con.close()
    assert states == {"big-call:gpt-4o": "firing", "unpriced:acme-labs-llm": "firing"}
    assert ("big-call", "fired", None) in history
    assert ("big-call", "notified", "ops-webhook") in history and ("big-call", "notified", "log") in history
