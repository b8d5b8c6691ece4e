"""Caps: the most output a call may ask for, and the most input it may send.

A `max_tokens` cap clamps the request's output bound (or refuses a larger
one, with `action: reject`), so a runaway completion cannot cost more than
the cap allows and budgets reserve a smaller worst case. A call that states
no bound gets the cap written into its body, in whichever field its
upstream reads. A `max_input_tokens` cap refuses oversized prompts before
they are paid for. Every decision is recorded in `call.control_actions` for
the ledger, and `call.max_tokens` holds the effective output bound.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from spendgate.controls.schema import Cap
from spendgate.controls.scope import Scope
from spendgate.controls.tokens import count_input_tokens, counts_exactly, estimate_input_tokens
from spendgate.controls.worst_case import lower_max_tokens, max_tokens
from spendgate.errors import GatewayError
from spendgate.pipeline import Call

CapsFor = Callable[[Call], Sequence[Cap]]


class CapStage:
    """Stage: apply every cap that matches the call (configured ones and the key's own)."""

    def __init__(self, caps: Sequence[Cap], caps_for: CapsFor | None = None) -> None:
        self.caps = [(cap, Scope(cap.match)) for cap in caps]
        self.caps_for = caps_for
        self._scopes: dict[int, tuple[Cap, Scope]] = {}  # scopes of the keys' own caps

    def _matching(self, call: Call) -> list[tuple[Cap, str]]:
        found = []
        for cap, scope in self.caps:
            inst = scope.instance(call)
            if inst is not None:
                found.append((cap, inst))
        if self.caps_for is not None:
            for cap in self.caps_for(call):
                inst = self._scope(cap).instance(call)
                if inst is not None:
                    found.append((cap, inst))
        return found

    def _scope(self, cap: Cap) -> Scope:
        hit = self._scopes.get(id(cap))
        if hit is not None and hit[0] is cap:
            return hit[1]
        if len(self._scopes) >= 100_000:
            self._scopes.clear()
        scope = Scope(cap.match)
        self._scopes[id(cap)] = (cap, scope)
        return scope

    async def __call__(self, call: Call) -> None:
        self.apply(call)

    def apply(self, call: Call) -> None:
        """The stage's work, without a coroutine (`assembly.Admission` runs it after the required tags)."""
        matching = self._matching(call)
        if not matching:
            return
        if call.endpoint != "embeddings":
            output = []  # a loop, not a comprehension: in 3.11 that is one more call per request
            for m in matching:
                if m[0].max_tokens is not None:
                    output.append(m)
            _cap_output(call, output)
        for cap, inst in matching:
            if cap.max_input_tokens is not None:
                _check_input(call, cap, inst)


def _cap_output(call: Call, caps: list[tuple[Cap, str]]) -> None:
    if not caps:
        return
    requested = max_tokens(call)  # None: the request states no bound
    lowest: tuple[Cap, int] | None = None
    for cap, inst in caps:
        limit = cap.max_tokens
        assert limit is not None
        if requested is not None and requested > limit and cap.action == "reject":
            field = _stated_field(call)
            call.control_actions.append(f"cap:{cap.name}:max_tokens {requested} refused")
            raise GatewayError(
                400,
                f"{field} {requested} is above the cap '{cap.name}' ({inst}): at most {limit} output tokens. "
                f"Send {field} <= {limit}.",
                param=field,
            )
        if lowest is None or limit < lowest[1]:
            lowest = (cap, limit)
    assert lowest is not None
    cap, limit = lowest
    if requested is None or requested > limit:  # a call stating no bound is clamped in either action
        lower_max_tokens(call, limit)  # sets every field above the cap, or adds one
        call.control_actions.append(f"cap:{cap.name}:max_tokens {requested if requested is not None else 'unset'}->{limit}")
    else:
        call.max_tokens = requested


def _check_input(call: Call, cap: Cap, inst: str) -> None:
    limit = cap.max_input_tokens
    assert limit is not None
    if estimate_input_tokens(call) <= limit:
        return
    counted = count_input_tokens(call)  # the cheap bound would refuse: count for real where we can
    if counted <= limit:
        return
    call.control_actions.append(f"cap:{cap.name}:max_input_tokens {counted} refused")
    how = "tokens" if counts_exactly(call) else "tokens at most (one per UTF-8 byte: no tokenizer ships for this model)"
    raise GatewayError(
        400,
        f"The input is too large for the cap '{cap.name}' ({inst}): {counted} input {how}; the cap allows {limit}. "
        "Shorten the prompt.",
    )


def _stated_field(call: Call) -> str:
    for name in ("max_completion_tokens", "max_tokens"):
        if name in call.body:
            return name
    return "max_tokens"
