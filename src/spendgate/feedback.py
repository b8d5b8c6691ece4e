"""`POST /v1/spendgate/feedback`: what became of a request's answer.

An application reports, after the fact, whether an answer served its purpose
(`{"request_id": "...", "outcome": "success" | "failure" | a label, "score": 0.8}`).
Outcomes are what a learned router trains on (`spendgate router train
--ledger`) and what cost per outcome is measured with (labels the
router reads as good or bad count as successes or failures; see spendgate.outcomes for `/v1/outcomes`, which adds
session outcomes and business value to the same storage). Only the key that
made a request may report on it: another key's request is a 404, as an
unknown one is, so request ids reveal nothing across tenants. Outcomes are
stored per key and request id (ids are client-chosen on ingest), so another
key's request with the same id neither lends its feature nor is overwritten.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from typing import Any

from spendgate.errors import GatewayError, json_object
from spendgate.ledger.outcomes import record_request_outcome
from spendgate.outcomes import REQUEST_ID as _REQUEST_ID
from spendgate.outcomes import OwnedOutcomes

_LABEL = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class Feedback(OwnedOutcomes):
    """`POST /v1/spendgate/feedback`: the ownership check and storage are /v1/outcomes's."""

    async def _accept(self, headers: dict[str, str], raw: bytes | None) -> dict[str, Any]:
        key_id = self.key_id(headers)
        request_id, outcome, score = _parse(raw)
        owner = await self.owner(key_id, request_id=request_id)
        await asyncio.to_thread(
            record_request_outcome, self.writer.store, request_id, outcome,
            key_id=key_id, ts=time.time(), score=score, feature=owner.feature, team=owner.team,
        )  # fmt: skip
        return {"object": "spendgate.feedback", "request_id": request_id, "outcome": outcome, "score": score}


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
