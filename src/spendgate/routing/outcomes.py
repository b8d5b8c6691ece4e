"""Training examples for a cascade's learned check, from the gateway's own ledger.

A request that went through a cascade's cheap step teaches one example:
- the cheap answer failed a check and was escalated: not good enough;
- the cheap answer was kept: what the application later said of it through the
  feedback API (`outcomes` table) — success, failure, or a score. An outcome is
  the reporting key's: it labels that key's events of the request only (request
  ids are client-chosen, so two keys' requests may share one; each is its own
  example). Events without a key are the allow-any-key mode's.
Kept answers nobody reported on teach nothing. The prompt is the ledger's
`request_text`, which exists only when the gateway stores text
(`privacy.store_text: true`): without it there is nothing to learn from.
"""

from __future__ import annotations

from dataclasses import dataclass

from spendgate.ledger.events import TAG_COLUMNS
from spendgate.ledger.outcomes import ANY_KEY_ID, ensure_schema
from spendgate.ledger.store import LedgerStore

POSITIVE = frozenset({"success", "good", "ok", "accepted", "resolved", "correct"})
NEGATIVE = frozenset({"failure", "bad", "rejected", "wrong", "incorrect", "escalated"})


@dataclass(frozen=True, slots=True)
class Harvest:
    examples: list[tuple[str, bool, str | None]]  # (prompt, ok, group)
    escalated: int  # examples labelled by the cascade's own checks
    reported: int  # examples labelled by feedback
    unlabelled: int  # kept answers without usable feedback (skipped)
    without_text: int  # cascade requests whose prompt was not stored (skipped)


def harvest(
    store: LedgerStore, cascade: str, *, group_tag: str | None = None, since: float | None = None, min_score: float = 0.5
) -> Harvest:
    if group_tag is not None and group_tag not in TAG_COLUMNS:
        raise ValueError(f"--group-tag must be one of the ledger's tag columns: {', '.join(TAG_COLUMNS)}")
    ensure_schema(store)  # an old ledger's outcomes get their key (the join below needs it)
    group_sql = f"MAX(e.{group_tag})" if group_tag else "NULL"
    sql = f"""
        SELECT MAX(e.request_text), {group_sql},
               MAX(CASE WHEN e.route_reason = 'cascade-escalation' THEN 1 ELSE 0 END),
               o.outcome, o.score
        FROM usage_events e
        LEFT JOIN outcomes o ON o.key_id = coalesce(e.key_id, ?) AND o.request_id = e.request_id
        WHERE (e.model_requested = ? OR e.control_actions LIKE ?) AND e.ts_start >= ?
        GROUP BY coalesce(e.key_id, ?), e.request_id
        HAVING MAX(CASE WHEN e.route_reason = 'cascade' AND e.status = 'ok' THEN 1 ELSE 0 END) = 1
    """  # noqa: S608 - group_tag is checked against the known columns
    rows = store.query(sql, (ANY_KEY_ID, f"cascade:{cascade}", f"%->cascade:{cascade}%", since or 0.0, ANY_KEY_ID))
    examples: list[tuple[str, bool, str | None]] = []
    escalated = reported = unlabelled = without_text = 0
    for text, group, was_escalated, outcome, score in rows:
        if not text:
            without_text += 1
            continue
        if was_escalated:
            ok = False
            escalated += 1
        elif outcome in POSITIVE or outcome in NEGATIVE:
            ok = outcome in POSITIVE
            reported += 1
        elif score is not None:
            ok = score >= min_score
            reported += 1
        else:
            unlabelled += 1
            continue
        examples.append((text, ok, group))
    return Harvest(examples, escalated, reported, unlabelled, without_text)
