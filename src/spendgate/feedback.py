"""`POST /v1/spendgate/feedback`: what became of a request's answer.

An application reports, after the fact, whether an answer served its purpose
(`{"request_id": "...", "outcome": "success" | "failure" | a label, "score": 0.8}`).
Outcomes are what a learned router trains on (`spendgate router train
--ledger`) and what cost per outcome is measured with. Only the key that
made a request may report on it: another key's request is a 404, as an
unknown one is, so request ids reveal nothing across tenants.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import Any

from spendgate.controls.identify import ANY_KEY_ID, KeyRing, presented_key
from spendgate.errors import GatewayError, json_object
from spendgate.ledger.writer import LedgerWriter

_LABEL = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class Feedback:
    def __init__(self, keys: KeyRing, writer: LedgerWriter) -> None:
        self.keys = keys
        self.writer = writer
        self._flushing = asyncio.Lock()  # one flush at a time, however many unknown ids are posted

    async def handle(self, headers: dict[str, str], raw: bytes | None) -> tuple[int, dict[str, Any]]:
        try:
            return 200, await self._accept(headers, raw)
        except GatewayError as err:
            return err.status, {"error": {"message": err.message, "type": "invalid_request_error" if err.status == 400 else err.kind}}

    async def _accept(self, headers: dict[str, str], raw: bytes | None) -> dict[str, Any]:
        key = self.keys.authenticate(presented_key(headers))
        key_id = key.id if key is not None else ANY_KEY_ID
        request_id, outcome, score = _parse(raw)
        owners = await asyncio.to_thread(self._owners, request_id)
        if not owners:  # the request's events may still be on their way to the ledger
            async with self._flushing:
                await asyncio.to_thread(self.writer.flush, 2.0)
            owners = await asyncio.to_thread(self._owners, request_id)
        if key_id not in owners:
            raise GatewayError(404, f"No request '{request_id}' made with this key is in the ledger.", "not_found")
        await asyncio.to_thread(self.writer.store.record_outcome, request_id, outcome, score, key_id, time.time())
        return {"object": "spendgate.feedback", "request_id": request_id, "outcome": outcome, "score": score}

    def _owners(self, request_id: str) -> set[str]:
        rows = self.writer.store.query("SELECT DISTINCT key_id FROM usage_events WHERE request_id = ?", (request_id,))
        return {r[0] for r in rows}


def _parse(raw: bytes | None) -> tuple[str, str, float | None]:
    if raw is None:
        raise GatewayError(413, "Too large.")
    body = json_object(raw, '{"request_id": ..., "outcome": ...}')
    unknown = set(body) - {"request_id", "outcome", "score"}
    if unknown:
        raise GatewayError(400, f"Unknown field(s): {', '.join(sorted(unknown))}.")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise GatewayError(400, "request_id: the x-spendgate-request-id of the call.", param="request_id")
    outcome = body.get("outcome")
    if not isinstance(outcome, str) or not _LABEL.match(outcome):
        raise GatewayError(400, "outcome: 'success', 'failure' or a lower-case label of at most 64 characters.", param="outcome")
    score = body.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)):
        raise GatewayError(400, "score: a finite number.", param="score")
    return request_id, outcome, float(score) if score is not None else None
