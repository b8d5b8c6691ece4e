"""`POST /v1/spendgate/events`: SDK-recorded usage lands in the gateway's ledger,
stamped with the posting key's identity and priced by the gateway's catalog."""

from __future__ import annotations

from decimal import Decimal

import httpx

from conftest import Gateway

M = Decimal(1_000_000)


def _event(**kw: object) -> dict:
    base = {
        "event_id": "evt-ingest-1",
        "request_id": "req-ingest-1",
        "endpoint": "chat.completions",
        "provider": "openai",
        "model_requested": "gpt-4o",
        "model_used": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 200,
        "cost": "999",  # a client cannot set its own price
        "key_id": "someone-else",  # nor pose as another key
        "team": "growth",
        "source": "sdk",
    }
    base.update(kw)
    return base


def test_ingest_stamps_identity_and_reprices(gateway: Gateway) -> None:
    r = httpx.post(
        f"{gateway.url}/v1/spendgate/events",
        headers={"authorization": "Bearer sk-test-search"},
        json={"events": [_event(), _event(event_id="evt-ingest-2", tags={"customer_tier": "gold"})]},
    )
    assert r.status_code == 200 and r.json() == {"accepted": 2}
    rows = gateway.wait_rows("request_id = ?", ("req-ingest-1",), count=2)
    assert len(rows) == 2
    for row in rows:
        assert row["key_id"] == "key-search"
        assert Decimal(row["cost"]) == (1000 * Decimal("2.50") + 200 * Decimal("10")) / M
        assert row["team"] == "growth"  # the event's own tag wins over the key default
        assert row["environment"] == "test"  # key default fills what the event lacks
        assert row["source"] == "sdk"
    assert '"customer_tier": "gold"' in rows[1]["tags"] or '"customer_tier":"gold"' in rows[1]["tags"]


def test_ingest_refuses_bad_key_and_bad_body(gateway: Gateway) -> None:
    r = httpx.post(f"{gateway.url}/v1/spendgate/events", headers={"authorization": "Bearer nope"}, json={"events": [_event()]})
    assert r.status_code == 401
    r = httpx.post(f"{gateway.url}/v1/spendgate/events", headers={"authorization": "Bearer sk-test-search"}, content=b"{oops")
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(f"{gateway.url}/v1/spendgate/events", headers={"authorization": "Bearer sk-test-search"}, json={"events": [_event(team="Bad Tag Value\x00")]})
    assert r.status_code == 400
