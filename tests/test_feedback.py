"""The feedback API: a request's outcome, reported by the key that made it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai

from conftest import Gateway
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.sqlite import SQLiteLedger
from spendgate.routing.learned import LearnedRouter
from spendgate.routing.outcomes import harvest


def call(gateway: Gateway, key: str) -> str:
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    r = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    return r.headers["x-spendgate-request-id"]


def feedback(gateway: Gateway, key: str | None, body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{gateway.url}/v1/spendgate/feedback", headers=headers, json=body)


def outcome(gateway: Gateway, request_id: str) -> tuple[Any, ...] | None:
    con = sqlite3.connect(gateway.ledger)
    try:
        return con.execute("SELECT outcome, score, key_id FROM outcomes WHERE request_id = ?", (request_id,)).fetchone()
    finally:
        con.close()


def test_the_requesting_key_records_an_outcome_at_once_and_the_latest_word_counts(gateway: Gateway) -> None:
    rid = call(gateway, "sk-test-search")  # reported right away: its event may not be written yet
    r = feedback(gateway, "sk-test-search", {"request_id": rid, "outcome": "success", "score": 0.9})
    assert r.status_code == 200 and r.json()["outcome"] == "success"
    assert outcome(gateway, rid) == ("success", 0.9, "key-search")
    assert feedback(gateway, "sk-test-search", {"request_id": rid, "outcome": "failure"}).status_code == 200
    assert outcome(gateway, rid) == ("failure", None, "key-search")
    # the ledger's events are untouched: outcomes live beside them
    con = sqlite3.connect(gateway.ledger)
    assert con.execute("SELECT count(*) FROM usage_events WHERE request_id = ?", (rid,)).fetchone() == (1,)


def test_another_keys_request_is_not_found(gateway: Gateway) -> None:
    rid = call(gateway, "sk-test-search")
    r = feedback(gateway, "sk-test-plain", {"request_id": rid, "outcome": "failure"})
    assert r.status_code == 404 and "No request" in r.json()["error"]["message"]
    assert outcome(gateway, rid) is None
    assert feedback(gateway, "sk-test-plain", {"request_id": "nope", "outcome": "success"}).status_code == 404


def test_bad_feedback_gets_a_clear_400_and_no_key_a_401(gateway: Gateway) -> None:
    rid = call(gateway, "sk-test-plain")
    for body, field in (
        ({"outcome": "success"}, "request_id"),
        ({"request_id": rid, "outcome": "Great Answer!"}, "outcome"),
        ({"request_id": rid, "outcome": "success", "score": "high"}, "score"),
        ({"request_id": rid, "outcome": "success", "extra": 1}, "Unknown field"),
    ):
        r = feedback(gateway, "sk-test-plain", body)
        assert r.status_code == 400 and field in r.json()["error"]["message"], body
    assert feedback(gateway, None, {"request_id": rid, "outcome": "success"}).status_code == 401


# ---- learning from outcomes: `spendgate router train --cascade` --------------------------------


def _cascade_ledger(path: Path) -> None:
    """Requests through cascade 'faq' as the gateway records them (prompts stored)."""
    store = SQLiteLedger(path)
    events: list[UsageEvent] = []
    for i in range(40):
        rid = f"req{i}"
        text = f"how do I reset my password {i}" if i % 2 else f"prove the theorem number {i} rigorously"
        common = {"request_id": rid, "key_id": "k", "model_requested": "auto", "control_actions": "route:faq:auto->cascade:faq",
                  "request_text": text, "feature": "faq", "ts_start": 1_800_000_000.0 + i, "ts_end": 1_800_000_001.0 + i}  # fmt: skip
        events.append(UsageEvent(attempt=1, route_reason="cascade", status="ok", **common))
        if i % 2 == 0 and i % 4 == 0:  # half the proofs were escalated by the checks
            events.append(UsageEvent(attempt=2, route_reason="cascade-escalation", status="ok", **common))
    events.append(UsageEvent(request_id="other", attempt=1, route_reason="cascade", model_requested="cascade:other", request_text="x"))
    events.append(UsageEvent(request_id="notext", attempt=1, route_reason="cascade", model_requested="cascade:faq"))
    store.append(events)
    for i in range(40):
        if i % 4 == 2:
            store.record_outcome(f"req{i}", "failure", None, "k", 0.0)  # the kept proofs were wrong
        elif i % 2 and i < 30:
            store.record_outcome(f"req{i}", "success" if i % 3 else "rated", 0.9, "k", 0.0)
    store.close()


def test_the_ledger_labels_escalations_and_reported_outcomes(tmp_path: Path) -> None:
    _cascade_ledger(tmp_path / "l.db")
    store = SQLiteLedger(tmp_path / "l.db")
    found = harvest(store, "faq", group_tag="feature")
    store.close()
    labels = {text: ok for text, ok, _ in found.examples}
    assert found.escalated == 10 and found.without_text == 1
    assert all(not ok for text, ok in labels.items() if "prove" in text)  # escalated or reported as failures
    assert all(ok for text, ok in labels.items() if "password" in text)  # success, or a score of 0.9 >= 0.5
    assert found.reported == 10 + 15 and found.unlabelled == 5  # kept answers nobody reported on
    assert {g for _, _, g in found.examples} == {"faq"}


def test_another_keys_feedback_does_not_label_a_request_with_the_same_id(tmp_path: Path) -> None:
    """Request ids are client-chosen: key B's 'req1' is B's, and B's feedback does not label key A's 'req1'."""
    _cascade_ledger(tmp_path / "l.db")  # key 'k' reported success on req1, failure on req2
    store = SQLiteLedger(tmp_path / "l.db")
    b_common = {"key_id": "b", "model_requested": "auto", "control_actions": "route:faq:auto->cascade:faq",
                "route_reason": "cascade", "status": "ok", "attempt": 1, "ts_start": 1_800_000_100.0}  # fmt: skip
    store.append([UsageEvent(request_id="req1", request_text="b asks something", **b_common),
                  UsageEvent(request_id="req3", request_text="b asks again", **b_common)])  # fmt: skip
    store.record_outcome("req2", "success", None, "b", 0.0)  # no request of B's: must not label k's req2
    store.record_outcome("req1", "failure", None, "b", 0.0)  # B's own req1
    found = harvest(store, "faq")
    store.close()
    labels = {text: ok for text, ok, _ in found.examples}
    assert labels["how do I reset my password 1"] is True  # k's success stands
    assert labels["prove the theorem number 2 rigorously"] is False  # k's failure, not B's "success"
    assert labels["b asks something"] is False and "b asks again" not in labels  # B's req3 has no feedback
    assert found.reported == 10 + 15 + 1 and found.unlabelled == 5 + 1


def test_router_train_from_the_ledger_writes_a_model_that_prefers_the_cheap_model_where_it_did_well(tmp_path: Path) -> None:
    _cascade_ledger(tmp_path / "l.db")
    out = subprocess.run(
        [sys.executable, "-m", "spendgate.cli", "router", "train", "--cascade", "faq", "--ledger", str(tmp_path / "l.db"),
         "--out", str(tmp_path / "m.json"), "--l2", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "35 examples from cascade 'faq': 10 escalated by its checks, 25 kept answers with feedback" in out.stderr
    model = LearnedRouter.load(tmp_path / "m.json")
    assert model.predict_one("how do I reset my password 99") > 0.5 > model.predict_one("prove the theorem number 98 rigorously")


def test_router_train_from_a_ledger_without_prompts_says_why_it_cannot(tmp_path: Path) -> None:
    store = SQLiteLedger(tmp_path / "l.db")
    store.append([UsageEvent(request_id="r", route_reason="cascade", model_requested="cascade:faq")])
    store.close()
    out = subprocess.run(
        [sys.executable, "-m", "spendgate.cli", "router", "train", "--cascade", "faq", "--ledger", str(tmp_path / "l.db"), "--out", str(tmp_path / "m.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1 and "privacy.store_text: true" in out.stderr
