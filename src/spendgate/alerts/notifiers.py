"""Where alerts go: a JSON webhook, a Slack-compatible webhook, email, the log.

Each notifier turns a `Notification` into one delivery and raises
`NotifyError` when it fails. Error text never holds the webhook URL or a
header (they often carry tokens) or a password: only the kind of failure
and an HTTP or SMTP status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import ssl
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Any, Protocol

import aiohttp

from spendgate.alerts.schema import EmailNotifier, LogNotifier, SlackNotifier, WebhookNotifier
from spendgate.analytics.since import format_time

log = logging.getLogger("spendgate.alerts")


class NotifyError(Exception):
    """A delivery failed; the message is safe to log (no URL, token or password)."""


@dataclass(frozen=True, slots=True)
class Notification:
    rule: str
    kind: str  # the rule kind
    subject: str
    status: str  # firing | resolved
    value: str
    threshold: str
    message: str
    fired_at: float
    ts: float

    def payload(self) -> dict[str, Any]:
        """The generic webhook body (money and numbers as exact strings)."""
        out = asdict(self)
        out["fired_at"] = format_time(self.fired_at)
        out["ts"] = format_time(self.ts)
        return {"source": "spendgate", **out}

    @property
    def title(self) -> str:
        state = "RESOLVED" if self.status == "resolved" else "FIRING"
        return f"{state}: {self.rule} ({self.subject})"


class Sender(Protocol):
    async def send(self, note: Notification) -> None: ...


class _Http:
    def __init__(self, cfg: WebhookNotifier | SlackNotifier) -> None:
        self.cfg = cfg

    async def _post(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(self.cfg.url, json=body, headers=headers) as resp:
                    if resp.status >= 300:
                        raise NotifyError(f"HTTP {resp.status}")
        except NotifyError:
            raise
        except asyncio.TimeoutError:
            raise NotifyError(f"timed out after {self.cfg.timeout_s:g}s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise NotifyError(type(exc).__name__) from None


class Webhook(_Http):
    cfg: WebhookNotifier

    async def send(self, note: Notification) -> None:
        await self._post(note.payload(), dict(self.cfg.headers))


class Slack(_Http):
    async def send(self, note: Notification) -> None:
        await self._post(slack_payload(note), {})


def slack_escape(text: str) -> str:
    """Text for a Slack text field: `&`, `<` and `>` as the entities Slack documents.

    Alert text carries caller-chosen data (model names, tag values, subjects);
    unescaped, `<!channel>` would ping a channel and `<https://x|y>` plant a link.
    """
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_clip(text: str, limit: int) -> str:
    """`slack_escape(text)` cut to at most `limit` characters, never inside an entity."""
    out, size = [], 0
    for ch in str(text):
        piece = slack_escape(ch)
        if size + len(piece) > limit:
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _mrkdwn(text: str) -> dict[str, Any]:
    # verbatim: no auto-linking of bare URLs or channel names, no parsing of bare @mentions
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def slack_payload(note: Notification) -> dict[str, Any]:
    """Slack incoming-webhook body: `text` (fallback) and Block Kit `blocks`.

    Every piece of alert data is escaped (`slack_escape`); only our own
    markup (`*Value*`, the emoji) is left for Slack to format.
    """
    icon = ":white_check_mark:" if note.status == "resolved" else ":rotating_light:"
    esc = slack_escape
    return {
        "text": f"{esc(note.title)}: {esc(note.message)}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _slack_clip(note.title, 150)}},
            {"type": "section", "text": _mrkdwn(f"{icon} {esc(note.message)}")},
            {
                "type": "section",
                "fields": [
                    _mrkdwn(f"*Value*\n{esc(note.value)}"),
                    _mrkdwn(f"*Threshold*\n{esc(note.threshold)}"),
                    _mrkdwn(f"*Rule kind*\n{esc(note.kind)}"),
                    _mrkdwn(f"*Fired at*\n{esc(format_time(note.fired_at))}"),
                ],
            },
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "spendgate alert"}]},
        ],
    }


_LINE_BREAKS = {c: " " for c in (*range(0x00, 0x20), 0x7F, 0x85, 0x2028, 0x2029)}


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters as spaces: safe for an
    email header (no new header can be started) and for a single log line."""
    return str(text).translate(_LINE_BREAKS)


class Email:
    def __init__(self, cfg: EmailNotifier) -> None:
        self.cfg = cfg

    async def send(self, note: Notification) -> None:
        await asyncio.to_thread(self._send, note)

    def _send(self, note: Notification) -> None:
        cfg = self.cfg
        password = None
        if cfg.password_env:
            password = os.environ.get(cfg.password_env)
            if password is None:
                raise NotifyError(f"environment variable {cfg.password_env} (the SMTP password) is not set")
        msg = EmailMessage()
        # the title holds caller-chosen data (model names): one line, so it cannot add headers
        msg["Subject"] = one_line(f"{cfg.subject_prefix} {note.title}").strip()
        msg["From"] = cfg.from_
        msg["To"] = ", ".join(cfg.to)
        lines = [note.message, "", f"Rule: {note.rule} ({note.kind})", f"Subject: {note.subject}"]
        lines += [f"Status: {note.status}", f"Value: {note.value}", f"Threshold: {note.threshold}"]
        lines += [f"Fired at: {format_time(note.fired_at)}", f"Sent at: {format_time(note.ts)}"]
        msg.set_content("\n".join(lines) + "\n")
        try:
            if cfg.ssl:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s, context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
            with smtp:
                if cfg.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if cfg.username:
                    smtp.login(cfg.username, password or "")
                smtp.send_message(msg)
        except smtplib.SMTPResponseException as exc:
            raise NotifyError(f"SMTP {exc.smtp_code} ({type(exc).__name__})") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifyError(type(exc).__name__) from None


class Log:
    def __init__(self, cfg: LogNotifier) -> None:
        self.level = logging.getLevelName(cfg.level.upper())

    async def send(self, note: Notification) -> None:
        log.log(self.level, "alert %s: %s", one_line(note.title), one_line(note.message))


def build(cfg: Any) -> Sender:
    kinds = {"webhook": Webhook, "slack": Slack, "email": Email, "log": Log}
    return kinds[cfg.kind](cfg)


async def deliver(name: str, sender: Sender, cfg: Any, note: Notification) -> str | None:
    """Send with a few retries; None when delivered, else why it failed (safe to log)."""
    attempts = 1 + getattr(cfg, "retries", 0)
    wait = getattr(cfg, "retry_wait_s", 0.0)
    error = "not sent"
    for attempt in range(1, attempts + 1):
        try:
            await sender.send(note)
            return None
        except NotifyError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a notifier bug must not stop the engine
            error = f"unexpected {type(exc).__name__}"
        log.warning("alert notifier %r (%s) failed, attempt %d/%d: %s", name, cfg.kind, attempt, attempts, error)
        if attempt < attempts:
            await asyncio.sleep(wait * 2 ** (attempt - 1))
    return error
