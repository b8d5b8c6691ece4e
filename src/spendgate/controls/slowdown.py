"""Slowdown: what a budget does to calls as it fills, before it refuses them.

Utilization = (settled + reserved) / effective limit (baseline + active
bursts). Steps are sorted by `at` (percent). Every step whose `at` is
reached applies, each action kind taken from the highest reached step that
has it for this call — so at 95% a `refuse_batch` step does not undo the
`route` and `cap_max_tokens` steps at 80% and 90% for interactive calls. The
highest reached step is the one "in force" (status). A step leaves alone
calls whose `feature` it lists in `except_features` (critical paths).

This module decides; the budget stage applies (it owns the headers, the
ledger notes and the refusal message).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from spendgate.controls.schema import SlowdownStep
from spendgate.pipeline import Call

HUNDRED = Decimal(100)


@dataclass(slots=True)
class Decision:
    """What a budget's reached steps ask of one call (None fields: nothing)."""

    route: tuple[SlowdownStep, str] | None = None  # (step, cheaper model)
    cap: SlowdownStep | None = None
    refuse: SlowdownStep | None = None  # reject, or refuse_batch for a batch call
    notify: SlowdownStep | None = None


def reached(used: Decimal | int, limit: Decimal, at: Decimal) -> bool:
    """used / limit >= at% (no division; a limit of 0 is always 100% used)."""
    return used * HUNDRED >= at * limit


def in_force(steps: Sequence[SlowdownStep], used: Decimal | int, limit: Decimal) -> SlowdownStep | None:
    """The highest step reached, or None."""
    found = None
    for step in steps:  # ascending `at`
        if reached(used, limit, step.at):
            found = step
        else:
            break
    return found


def decide(steps: Sequence[SlowdownStep], used: Decimal | int, limit: Decimal, call: Call) -> Decision | None:
    """The actions of every reached step that apply to `call`; None when none do."""
    if not steps or not reached(used, limit, steps[0].at):
        return None
    feature = call.tags.get("feature")
    decision = Decision()
    acted = False
    for step in steps:
        if not reached(used, limit, step.at):
            break
        if feature is not None and feature in step.except_features:
            continue
        action = step.action
        if action == "route":
            target = step.route.get(call.model)
            if target is not None and target != call.model:
                decision.route = (step, target)
                acted = True
        elif action == "cap_max_tokens":
            cap = decision.cap
            if cap is None or (step.max_tokens or 0) < (cap.max_tokens or 0):
                decision.cap = step
            acted = True
        elif action == "reject":
            decision.refuse = step
            acted = True
        elif action == "refuse_batch":
            if call.tags.get("priority") == "batch":
                decision.refuse = step
                acted = True
        else:  # notify
            decision.notify = step
            acted = True
    return decision if acted else None


def percent(at: Decimal) -> str:
    """`80` for Decimal('80'), `80.5` for Decimal('80.50')."""
    return format(at.normalize(), "f")


def label(budget: str, at: Decimal) -> str:
    return f"{budget}@{percent(at)}%"
