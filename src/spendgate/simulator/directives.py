"""`[[sim:key=value]]` directives in prompt text and the `x-sim-fault` header.

Directives ride inside the prompt so they survive any gateway and any format
translation between the test and the simulator. `[[sim:key@MODEL=value]]`
applies only when the request's model (what the upstream receives: the body's
`model`, or the Azure deployment) is MODEL; a trailing `*` makes it a prefix
glob. For each key, an exact model scope wins over a glob (the longest glob
first), a glob over an unscoped directive; among equals, a later one wins.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

from spendgate.simulator.settings import FAULT_KINDS

DIRECTIVE_MARK = "[[sim:"
MAX_OUTPUT_TOKENS = 1_000_000  # keeps a typo from building a gigabyte answer
REPLY_KINDS = ("text", "refusal", "refusal_flag", "unsure", "json", "bad_json")
_DIRECTIVE = re.compile(r"\[\[sim:([a-z_]+)(@[^\]\s=]+)?=([^\]\s]*)\]\]")


def parse_directives(text: str) -> dict[str, str]:
    """All directives in `text`, keyed `key` or `key@MODEL`; a later one wins over an earlier one."""
    return {key + scope: value for key, scope, value in _DIRECTIVE.findall(text)}


def resolve_directives(directives: dict[str, str], model: str) -> dict[str, str]:
    """The directives that apply to `model`: scoped ones for other models dropped, the most specific kept."""
    if not any("@" in k for k in directives):
        return directives
    best: dict[str, tuple[int, str]] = {}
    for raw, value in directives.items():
        key, _, scope = raw.partition("@")
        if not scope:
            rank = 0
        elif scope == model:
            rank = 1 << 20
        elif "*" in scope and fnmatchcase(model, scope):
            rank = 1 + len(scope.replace("*", ""))
        else:
            continue
        held = best.get(key)
        if held is None or rank >= held[0]:
            best[key] = (rank, value)
    return {k: v for k, (_, v) in best.items()}


@dataclass(slots=True)
class Controls:
    """Per-request overrides read from directives and headers."""

    output_tokens: int | None = None
    fault: str | None = None
    latency_ms: float | None = None
    tokens_per_second: float | None = None
    retry_after: float | None = None  # seconds, for 429/503/529 faults
    fault_times: int | None = None  # the fault applies to the first N requests of `fault_key` only
    fault_key: bytes = b""  # hash of the model and the whole directive set (and the fault header)
    context_window: int | None = None  # prompts longer than this get the context-length 400
    logprob: float | None = None  # mean token logprob of the answer
    reply: str | None = None  # one of REPLY_KINDS


def read_controls(directives: dict[str, str], fault_header: str | None, model: str = "") -> Controls:
    c = Controls()
    if not directives and not fault_header:
        return c
    raw = directives
    directives = resolve_directives(directives, model)
    tokens = _number(directives.get("output_tokens"))
    c.output_tokens = min(int(tokens), MAX_OUTPUT_TOKENS) if tokens is not None else None
    c.latency_ms = _number(directives.get("latency_ms"))
    c.tokens_per_second = _number(directives.get("tokens_per_second"))
    header = (fault_header or "").strip().lower()
    fault = directives.get("fault") or header or None
    c.fault = fault if fault in FAULT_KINDS else None
    c.retry_after = _number(directives.get("retry_after"))
    times = _number(directives.get("fault_times"))
    if times is not None and c.fault is not None:
        c.fault_times = int(times)
        h = hashlib.blake2b(digest_size=16)
        h.update(model.encode())
        for k in sorted(raw):
            h.update(b"\x00" + k.encode() + b"=" + raw[k].encode())
        h.update(b"\x01" + header.encode())
        c.fault_key = h.digest()
    window = _number(directives.get("context_window"))
    c.context_window = int(window) if window is not None else None
    logprob = _number(directives.get("logprob"), signed=True)
    c.logprob = logprob if logprob is not None and logprob <= 0 else None
    reply = directives.get("reply")
    c.reply = reply if reply in REPLY_KINDS else None
    return c


def _number(raw: str | None, signed: bool = False) -> float | None:
    """A finite number (non-negative unless `signed`), or None when absent or malformed (ignored, never an error)."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and (signed or value >= 0) else None
