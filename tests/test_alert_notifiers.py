"""Notifiers deliver to real local receivers: a webhook server (generic JSON and
Slack-shaped payloads) and an SMTP sink; a failing receiver is retried, the
failure recorded in history, and no URL token or password reaches the log."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import socket
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from spendgate.alerts.engine import AlertEngine
from spendgate.alerts.schema import AlertsConfig
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.sqlite import SQLiteLedger

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC).timestamp()


class Receiver:
    """A local HTTP endpoint recording what it is sent; answers `status`."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], Any]] = []
        self.status = 200
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> "Receiver":
        async def handle(request: web.Request) -> web.Response:
            self.received.append((request.path_qs, dict(request.headers), await request.json()))
            return web.Response(status=self.status, text="ok")

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def receiver() -> Any:
    r = await Receiver().start()
    yield r
    await r.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    store = SQLiteLedger(tmp_path / "ledger.db")
    store.append([UsageEvent(ts_start=NOW - 60, cost=Decimal("12.5"), model_used="gpt-4o", team="search")])
    yield store
    store.close()


def make(ledger: Any, notifiers: dict[str, Any], **rule: Any) -> AlertEngine:
    cfg = AlertsConfig.model_validate(
        {
            "notifiers": notifiers,
            "rules": [{"name": "daily", "kind": "daily_spend", "above": "10", "notify": list(notifiers), **rule}],
        }
    )
    return AlertEngine(cfg, ledger, None, None, clock=lambda: NOW)


async def test_webhook_gets_the_alert_as_json(ledger: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN", "tok-123")
    from spendgate.config import _interpolate  # the config loader's ${VAR} expansion

    hook = _interpolate({"kind": "webhook", "url": f"{receiver.url}/alerts", "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"}})
    e = make(ledger, {"hook": hook})
    await e.evaluate(NOW)
    [(path, headers, body)] = receiver.received
    assert path == "/alerts" and headers["Authorization"] == "Bearer tok-123"
    assert body["source"] == "spendgate" and body["status"] == "firing"
    assert (body["rule"], body["kind"], body["subject"]) == ("daily", "daily_spend", "2026-11-18")
    assert (body["value"], body["threshold"]) == ("12.5", "10")  # money as exact strings
    assert body["fired_at"].startswith("2026-11-18T12:00")
    assert "$12.5" in body["message"]
    [note] = [h for h in e.history() if h["event"] == "notified"]
    assert note["notifier"] == "hook"


async def test_slack_payload_has_text_and_blocks(ledger: Any, receiver: Receiver) -> None:
    e = make(ledger, {"slack": {"kind": "slack", "url": f"{receiver.url}/services/T000/B000/XXXX"}}, notify_resolved=True)
    await e.evaluate(NOW)
    [(_, _, body)] = receiver.received
    assert body["text"].startswith("FIRING: daily (2026-11-18)") and "$12.5" in body["text"]
    kinds = [b["type"] for b in body["blocks"]]
    assert kinds[0] == "header" and "section" in kinds
    fields = {f["text"] for b in body["blocks"] for f in b.get("fields", [])}
    assert "*Value*\n12.5" in fields and "*Threshold*\n10" in fields
    # the day ends: resolved, announced because notify_resolved is set
    await e.evaluate(NOW + 86400)
    assert receiver.received[-1][2]["text"].startswith("RESOLVED: daily (2026-11-18)")


EVIL_MODEL = "<!channel> <https://evil.example|fix prices> & co"


def unpriced(ledger: Any, notifiers: dict[str, Any]) -> AlertEngine:
    cfg = AlertsConfig.model_validate(
        {"notifiers": notifiers, "rules": [{"name": "unpriced", "kind": "unpriced_model", "notify": list(notifiers)}]}
    )
    return AlertEngine(cfg, ledger, None, None, clock=lambda: NOW)


async def test_slack_escapes_caller_chosen_text(ledger: Any, receiver: Receiver) -> None:
    """A model name (chosen by whoever calls the gateway) cannot ping a channel or plant a link."""
    e = unpriced(ledger, {"slack": {"kind": "slack", "url": f"{receiver.url}/services/T000/B000/XXXX"}})
    e.on_events([UsageEvent(ts_start=NOW, model_used=EVIL_MODEL, provider="<@U123>", price_status="missing")])
    await e.process_pending()
    [(_, _, body)] = receiver.received
    raw = json.dumps(body)
    for bad in ("<!channel>", "<https://evil", "<@U123>", "& co"):
        assert bad not in raw
    safe = "&lt;!channel&gt; &lt;https://evil.example|fix prices&gt; &amp; co"
    assert body["text"] == f"FIRING: unpriced ({safe}): Model {safe} (provider &lt;@U123&gt;" + body["text"].split("&lt;@U123&gt;", 1)[1]
    header, section = body["blocks"][0], body["blocks"][1]
    assert header["text"]["text"] == f"FIRING: unpriced ({safe})"
    assert safe in section["text"]["text"] and section["text"]["verbatim"] is True
    assert all(f["verbatim"] for f in body["blocks"][2]["fields"])
    assert "*Value*\nmissing" in {f["text"] for f in body["blocks"][2]["fields"]}  # our own markup stays


def test_slack_header_is_clipped_between_entities() -> None:
    from spendgate.alerts.notifiers import Notification, slack_payload

    note = Notification("r", "unpriced_model", "x" * 131 + "<" * 10, "firing", "1", "2", "m", NOW, NOW)
    header = slack_payload(note)["blocks"][0]["text"]["text"]
    assert len(header) <= 150 and header.endswith("&lt;") and "<" not in header


async def test_failing_webhook_is_retried_recorded_and_never_logs_the_url(
    ledger: Any, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.status = 500
    secret_url = f"{receiver.url}/hooks/secret-token-abc"
    e = make(
        ledger,
        {
            "hook": {"kind": "webhook", "url": secret_url, "retries": 2, "retry_wait_s": 0.01},
            "down": {"kind": "webhook", "url": "http://127.0.0.1:9/secret-token-xyz", "retries": 0, "timeout_s": 2},
            "log": {"kind": "log"},
        },
    )
    await e.evaluate(NOW)  # must not raise
    assert len(receiver.received) == 3  # one attempt and two retries
    by_notifier = {h["notifier"]: h for h in e.history() if h["event"] in ("notified", "notify_failed")}
    assert by_notifier["hook"]["event"] == "notify_failed" and "HTTP 500" in by_notifier["hook"]["detail"]
    assert by_notifier["down"]["event"] == "notify_failed"
    assert by_notifier["log"]["event"] == "notified"  # one notifier's failure does not stop the others
    assert "secret-token" not in caplog.text and "secret-token" not in str(e.history())
    assert "secret-token" not in repr(e.config)
    # the engine goes on: the alert stays firing and is not re-sent within the cooldown
    await e.evaluate(NOW + 60)
    assert len(receiver.received) == 3
    assert len(e.firing()) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def _auth(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"alerts", b"s3cret-pass")
    return AuthResult(success=ok)


async def test_email_arrives_at_a_local_smtp_sink(ledger: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()
    port = _free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, authenticator=_auth, auth_require_tls=False)
    controller.start()
    try:
        monkeypatch.setenv("SMTP_PASSWORD", "s3cret-pass")
        mail = {
            "kind": "email", "host": "127.0.0.1", "port": port, "username": "alerts", "password_env": "SMTP_PASSWORD",
            "from": "spendgate@example.com", "to": ["finops@example.com", "oncall@example.com"], "retry_wait_s": 0.01,
        }
        e = make(ledger, {"mail": mail})
        await e.evaluate(NOW)
        [(sender, rcpts, raw)] = sink.messages
        assert sender == "spendgate@example.com" and rcpts == ["finops@example.com", "oncall@example.com"]
        msg = email.message_from_bytes(raw)
        assert msg["Subject"] == "[spendgate] FIRING: daily (2026-11-18)"
        body = msg.get_payload(decode=True).decode()
        assert "$12.5" in body and "Threshold: 10" in body
        # a wrong password: the SMTP refusal is recorded, the password never logged
        monkeypatch.setenv("SMTP_PASSWORD", "wrong-pass")
        e2 = make(ledger, {"mail": {**mail, "retries": 0, "timeout_s": 1}}, name="daily2")
        await e2.evaluate(NOW)
        [failed] = [h for h in e2.history() if h["event"] == "notify_failed"]
        assert failed["notifier"] == "mail" and failed["detail"].startswith("firing: SMTP")
        assert "wrong-pass" not in caplog.text and "s3cret-pass" not in caplog.text
        assert len(sink.messages) == 1
    finally:
        controller.stop()


async def test_email_subject_cannot_gain_headers(ledger: Any) -> None:
    """Line breaks in a model name are folded into the subject line: no injected header,
    no extra recipient, and the alert still goes out."""
    sink = Sink()
    port = _free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        mail = {"kind": "email", "host": "127.0.0.1", "port": port, "from": "spendgate@example.com", "to": ["finops@example.com"]}
        e = unpriced(ledger, {"mail": mail})
        model = "acme\r\nBcc: evil@example.com\nX-Injected: yes\u2028more"
        e.on_events([UsageEvent(ts_start=NOW, model_used=model, price_status="missing")])
        await e.process_pending()
        [(_, rcpts, raw)] = sink.messages
        assert rcpts == ["finops@example.com"]
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert msg["Bcc"] is None and msg["X-Injected"] is None
        headers = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].lower()
        assert b"\nbcc:" not in headers and b"\nx-injected:" not in headers
        assert msg["Subject"] == "[spendgate] FIRING: unpriced (acme  Bcc: evil@example.com X-Injected: yes more)"
        assert [h["event"] for h in e.history() if h["notifier"] == "mail"] == ["notified"]
    finally:
        controller.stop()


async def test_notifications_leave_the_writer_thread_at_once(tmp_path: Path, receiver: Receiver) -> None:
    """A slow webhook never holds up the ledger writer: per-event findings are handed to the loop."""
    from spendgate.ledger.writer import LedgerWriter

    slow_started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        slow_started.set()
        await asyncio.sleep(1.0)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    store = SQLiteLedger(tmp_path / "l.db")
    writer = LedgerWriter(store, flush_interval_ms=1)
    writer.start()
    cfg = AlertsConfig.model_validate(
        {
            "notifiers": {"slow": {"kind": "webhook", "url": f"http://127.0.0.1:{port}/slow"}},
            "rules": [{"name": "big", "kind": "single_call", "above": "1", "notify": ["slow"]}],
        }
    )
    e = AlertEngine(cfg, store, writer, None)
    e.start()
    try:
        writer.submit(UsageEvent(ts_start=NOW, cost=Decimal("2"), model_used="gpt-4o"))
        await asyncio.wait_for(slow_started.wait(), 5)
        # while the webhook is still answering, the writer keeps writing promptly
        writer.submit(UsageEvent(ts_start=NOW, cost=Decimal("0.1"), model_used="gpt-4o"))
        assert await asyncio.to_thread(writer.flush, 0.5)
    finally:
        await e.close()
        writer.close()
        await runner.cleanup()
