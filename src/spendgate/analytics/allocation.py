"""Splitting a shared amount among owners, exactly.

`allocate(amount, owners, rule, direct, quantum)` hands out the amount in
units of `quantum` (or of the amount's own last digit when that is finer, so
any amount can be split) by the largest-remainder method: each owner first
gets the whole units of its exact quota (amount x weight / total weight,
computed in integers), then the units left over go one each to the owners
with the largest remainders (ties: owner name order). The parts therefore
always sum to the amount exactly, and no part differs from its exact quota by
a unit or more.

Rules: proportional (weights = each owner's direct spend; equal weights when
nobody has any), even (equal weights), fixed (weights = the configured
percentages; owners without a share get nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from spendgate.analytics.showback_schema import AllocationRule
from spendgate.ledger.sqlite import EXACT

DEFAULT_QUANTUM = Decimal("0.000001")


def unit_for(amount: Decimal, quantum: Decimal) -> Decimal:
    """The step parts are counted in: the quantum (a power of ten), or finer when the amount needs it."""
    exp = amount.as_tuple().exponent
    assert isinstance(exp, int), "a finite amount"
    return Decimal(1).scaleb(min(exp, quantum.adjusted()))


def _integer_weights(weights: Sequence[Decimal]) -> list[int]:
    """The same ratios as integers (scaled by a common power of ten)."""
    exps = [w.as_tuple().exponent for w in weights if w]
    scale = -min([e for e in exps if isinstance(e, int)] + [0])
    return [int(w.scaleb(scale, context=EXACT)) for w in weights]


def largest_remainder(amount: Decimal, weights: Sequence[Decimal], quantum: Decimal = DEFAULT_QUANTUM) -> list[Decimal]:
    """`amount` split in proportion to `weights`; the parts sum to `amount` exactly.

    Weights must be non-negative with a positive sum.
    """
    if any(w < 0 for w in weights):
        raise ValueError("allocation weights must not be negative")
    ints = _integer_weights(weights)
    total_weight = sum(ints)
    if total_weight <= 0:
        raise ValueError("allocation weights sum to zero")
    unit = unit_for(amount, quantum)
    units_signed = int(amount.scaleb(-unit.adjusted(), context=EXACT))  # exact: amount is a multiple of unit
    sign, units = (-1 if units_signed < 0 else 1), abs(units_signed)
    floors = [units * w // total_weight for w in ints]
    remainders = [units * w % total_weight for w in ints]
    left = units - sum(floors)
    order = sorted(range(len(ints)), key=lambda i: -remainders[i])  # stable: earlier owners win ties
    for i in order[:left]:
        floors[i] += 1
    return [Decimal(sign * n).scaleb(unit.adjusted(), context=EXACT) for n in floors]


def allocate(
    amount: Decimal,
    owners: Sequence[str],
    rule: AllocationRule,
    direct: Mapping[str, Decimal],
    quantum: Decimal = DEFAULT_QUANTUM,
) -> dict[str, Decimal]:
    """owner -> part of `amount` under `rule`; parts sum exactly to `amount`.

    `owners` are the statement's owners (sorted: ties go to the first);
    `direct` is each owner's direct spend (for proportional). A fixed rule may
    name owners absent from `owners`: they are added.
    """
    names = sorted(set(owners) | (set(rule.shares) if rule.rule == "fixed" else set()))
    if not names:
        raise ValueError("nobody to allocate to")
    if rule.rule == "fixed":
        weights = [rule.shares.get(n, Decimal(0)) for n in names]
    elif rule.rule == "proportional" and any(direct.get(n, Decimal(0)) > 0 for n in names):
        weights = [max(direct.get(n, Decimal(0)), Decimal(0)) for n in names]
    else:  # even, or proportional with no direct spend to go by
        weights = [Decimal(1)] * len(names)
    return dict(zip(names, largest_remainder(amount, weights, quantum)))
