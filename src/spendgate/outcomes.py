"""`POST /v1/outcomes`: what a request or a session achieved, for unit economics.

An application reports after the fact whether a request or a whole session
(the `session_id` tag of its calls) succeeded, with an optional business value:

    {"session_id": "chat-42", "outcome": "success", "value": "19.90", "feature": "checkout"}

Reports then divide a feature's spend by its successful outcomes (cost per
successful outcome), and cost SLOs watch that ratio. The feature and team are
taken from the request's or session's events when the outcome is recorded
(`feature` in the body overrides the feature).

Only the key that made a request or session may report on it: an unknown id
and another key's id are the same 404, so ids reveal nothing across keys.
Request ids are client-chosen (ingest), so outcomes are per key and id, and the
feature and team come from the presenting key's own events only: another key
using the same request id neither sees nor replaces this key's outcome.
`value` is an exact decimal (a JSON string such as "19.90", or a number read
without passing through binary floating point). The feedback API
(`/v1/spendgate/feedback`, spendgate.feedback) shares the ownership check and
the storage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from spendgate.controls.identify import ANY_KEY_ID, KeyRing, presented_key
from spendgate.errors import GatewayError
from spendgate.ledger.outcomes import Owner, ensure_schema, record_request_outcome, record_session_outcome, request_owner, session_owner
from spendgate.ledger.writer import LedgerWriter

log = logging.getLogger("spendgate.outcomes")

FLUSH_INTERVAL_S = 0.1  # unknown ids force at most one ledger-writer flush per this long
FLUSH_TIMEOUT_S = 2.0
REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
OUTCOMES = ("success", "failure")
MAX_FUTURE_S = 300.0  # clock skew tolerated for a client-given ts
_MAX_INTEGER_DIGITS = 15  # a business value below a quadrillion
_MAX_DECIMALS = 18


def error_payload(err: GatewayError) -> dict[str, Any]:
    """The OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
    kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error", 413: "invalid_request_error"}
    return {"error": {"message": err.message, "type": kinds.get(err.status, err.kind), "param": err.param,
                      "code": "not_found" if err.status == 404 else ("invalid_api_key" if err.status == 401 else None)}}  # fmt: skip


class OwnedOutcomes:
    """The part the outcomes and feedback APIs share: who may report on what."""

    def __init__(self, keys: KeyRing, writer: LedgerWriter) -> None:
        self.keys = keys
        self.writer = writer
        # Unknown ids wait for a writer flush shared by every caller that
        # arrives before it starts, and flushes start at most every
        # FLUSH_INTERVAL_S: posting random ids cannot force a commit per post.
        self._flushing = asyncio.Lock()  # held while a flush runs
        self._next_flush: asyncio.Future[None] | None = None  # the shared flush not started yet
        self._flush_task: asyncio.Task[None] | None = None
        self._last_flush = -math.inf  # time.monotonic() of the last flush's start

    async def handle(self, headers: dict[str, str], raw: bytes | None) -> tuple[int, dict[str, Any]]:
        try:
            return 200, await self._accept(headers, raw)
        except GatewayError as err:
            return err.status, error_payload(err)

    async def _accept(self, headers: dict[str, str], raw: bytes | None) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def key_id(self, headers: dict[str, str]) -> str:
        key = self.keys.authenticate(presented_key(headers))
        return key.id if key is not None else ANY_KEY_ID

    async def owner(self, key_id: str, request_id: str | None = None, session_id: str | None = None) -> Owner:
        """This key's request (or session), from this key's events only; 404 unless `key_id` made it.

        Reported right after the call, its events may still be on their way to
        the ledger: an id not found yet waits for a writer flush that starts
        after it arrived (shared, see `flushed`), then looks again.
        """
        store = self.writer.store

        def look() -> Owner:
            ensure_schema(store)  # once per store; the ledger may predate outcomes
            if request_id is not None:
                return request_owner(store, request_id, key_id)
            return session_owner(store, session_id or "", key_id)

        found = await asyncio.to_thread(look)
        if key_id not in found.key_ids:
            await self.flushed()
            found = await asyncio.to_thread(look)
        if key_id not in found.key_ids:
            what = f"request '{request_id}'" if request_id is not None else f"session '{session_id}'"
            raise GatewayError(404, f"No {what} made with this key is in the ledger.", "not_found")
        return found

    async def flushed(self) -> None:
        """Return once a ledger-writer flush that started after this call has ended.

        Callers arriving before that flush starts share it (one flush for any
        number of them); a flush in progress is not enough (events queued after
        it started are not in it), so they wait for the next, which starts when
        it ends and no sooner than FLUSH_INTERVAL_S after its start.
        """
        if self._next_flush is None:
            self._next_flush = asyncio.get_running_loop().create_future()
            self._flush_task = asyncio.create_task(self._flush(self._next_flush))
        await asyncio.shield(self._next_flush)  # a caller giving up does not cancel the others' flush

    async def _flush(self, done: asyncio.Future[None]) -> None:
        try:
            async with self._flushing:
                wait = self._last_flush + FLUSH_INTERVAL_S - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._next_flush = None  # callers from now on need the next flush
                self._last_flush = time.monotonic()
                if not await asyncio.to_thread(self.writer.flush, FLUSH_TIMEOUT_S):
                    log.warning("outcomes: the ledger writer did not flush within %.1fs", FLUSH_TIMEOUT_S)
        except Exception:  # the callers look again either way: a 404 at worst
            log.exception("outcomes: the ledger writer flush failed")
        finally:
            if self._next_flush is done:  # failed before it started
                self._next_flush = None
            if not done.done():
                done.set_result(None)


class Outcomes(OwnedOutcomes):
    """`POST /v1/outcomes`."""

    async def _accept(self, headers: dict[str, str], raw: bytes | None) -> dict[str, Any]:
        key_id = self.key_id(headers)
        body = parse_outcome(raw, now=time.time())
        owner = await self.owner(key_id, body.get("request_id"), body.get("session_id"))
        feature = body["feature"] if body["feature"] is not None else owner.feature
        store = self.writer.store
        common = {"key_id": key_id, "ts": body["ts"], "value": body["value"], "feature": feature, "team": owner.team}
        if "request_id" in body:
            await asyncio.to_thread(record_request_outcome, store, body["request_id"], body["outcome"], **common)
            subject = {"request_id": body["request_id"]}
        else:
            await asyncio.to_thread(record_session_outcome, store, body["session_id"], body["outcome"], **common)
            subject = {"session_id": body["session_id"]}
        value = body["value"]
        return {"object": "spendgate.outcome", **subject, "outcome": body["outcome"],
                "value": None if value is None else format(value, "f"), "feature": feature, "ts": body["ts"]}  # fmt: skip


def _reject_constant(name: str) -> Any:
    raise GatewayError(400, f"The body is not valid JSON: {name} is not a number.")


def json_body(raw: bytes | None, shape: str) -> dict[str, Any]:
    """The body as a JSON object, numbers with a fraction read as exact Decimals."""
    if raw is None:
        raise GatewayError(413, "The request body is too large.")
    try:
        body = json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise GatewayError(400, f"The body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise GatewayError(400, f"The body must be a JSON object: {shape}.")
    return body


def _text(body: dict[str, Any], name: str, limit: int = 256) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit or any(ord(c) < 32 for c in value):
        raise GatewayError(400, f"{name}: a non-empty string of at most {limit} characters.", param=name)
    return value


def parse_value(raw: Any) -> Decimal | None:
    """An exact decimal from "19.90", 19.9 (read as Decimal) or 20; never a float."""
    if raw is None:
        return None
    if isinstance(raw, bool) or isinstance(raw, float) or not isinstance(raw, (str, int, Decimal)):
        raise GatewayError(400, 'value: an exact decimal amount, as a string ("19.90") or a number.', param="value")
    try:
        value = Decimal(raw.strip()) if isinstance(raw, str) else Decimal(raw)
    except InvalidOperation:
        raise GatewayError(400, f'value: {raw!r} is not a decimal amount (write e.g. "19.90").', param="value") from None
    exponent = value.as_tuple().exponent
    if not value.is_finite() or not isinstance(exponent, int) or value.adjusted() >= _MAX_INTEGER_DIGITS or exponent < -_MAX_DECIMALS:
        raise GatewayError(400, f"value: a finite amount below 10^{_MAX_INTEGER_DIGITS} with at most {_MAX_DECIMALS} decimals.", param="value")
    return value


def parse_ts(raw: Any, now: float) -> float:
    """Unix seconds or ISO 8601 text (no offset: UTC); default now; never in the future."""
    if raw is None:
        return now
    if isinstance(raw, (int, Decimal)) and not isinstance(raw, bool):
        ts = float(raw)
    elif isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise GatewayError(400, "ts: unix seconds or an ISO 8601 time such as 2026-11-03T10:00:00Z.", param="ts") from None
        ts = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    else:
        raise GatewayError(400, "ts: unix seconds or an ISO 8601 time such as 2026-11-03T10:00:00Z.", param="ts")
    if not math.isfinite(ts) or ts < 0 or ts > now + MAX_FUTURE_S:
        raise GatewayError(400, "ts: the time the outcome happened, not in the future.", param="ts")
    return ts


def parse_outcome(raw: bytes | None, now: float) -> dict[str, Any]:
    """A checked `/v1/outcomes` body; 400 naming the field at fault."""
    body = json_body(raw, '{"request_id" or "session_id": ..., "outcome": "success" | "failure"}')
    unknown = set(body) - {"request_id", "session_id", "outcome", "value", "feature", "ts"}
    if unknown:
        raise GatewayError(400, f"Unknown field(s): {', '.join(sorted(unknown))}.")
    if ("request_id" in body) == ("session_id" in body):
        raise GatewayError(400, "Give exactly one of request_id (a call's x-spendgate-request-id) or session_id.", param="request_id")
    out: dict[str, Any] = {}
    if "request_id" in body:
        rid = body["request_id"]
        if not isinstance(rid, str) or not REQUEST_ID.match(rid):
            raise GatewayError(400, "request_id: the x-spendgate-request-id of the call.", param="request_id")
        out["request_id"] = rid
    else:
        out["session_id"] = _text(body, "session_id")
        if out["session_id"] is None:
            raise GatewayError(400, "session_id: the session_id tag of the session's calls.", param="session_id")
    outcome = body.get("outcome")
    if outcome not in OUTCOMES:
        raise GatewayError(400, "outcome: 'success' or 'failure'.", param="outcome")
    out["outcome"] = outcome
    out["value"] = parse_value(body.get("value"))
    out["feature"] = _text(body, "feature", 128)
    out["ts"] = parse_ts(body.get("ts"), now)
    return out
