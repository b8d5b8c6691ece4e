"""`[[sim:key=value]]` directives in prompt text and the `x-sim-fault` header.

Directives ride inside the prompt so they survive any gateway and any format
translation between the test and the simulator.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from spendgate.simulator.settings import FAULT_KINDS

DIRECTIVE_MARK = "[[sim:"
MAX_OUTPUT_TOKENS = 1_000_000  # keeps a typo from building a gigabyte answer
_DIRECTIVE = re.compile(r"\[\[sim:([a-z_]+)=([^\]\s]*)\]\]")


def parse_directives(text: str) -> dict[str, str]:
    """All directives in `text`; a later one wins over an earlier one."""
    return dict(_DIRECTIVE.findall(text))


@dataclass(slots=True)
class Controls:
    """Per-request overrides read from directives and headers."""

    output_tokens: int | None = None
    fault: str | None = None
    latency_ms: float | None = None
    tokens_per_second: float | None = None


def read_controls(directives: dict[str, str], fault_header: str | None) -> Controls:
    c = Controls()
    if not directives and not fault_header:
        return c
    tokens = _number(directives.get("output_tokens"))
    c.output_tokens = min(int(tokens), MAX_OUTPUT_TOKENS) if tokens is not None else None
    c.latency_ms = _number(directives.get("latency_ms"))
    c.tokens_per_second = _number(directives.get("tokens_per_second"))
    fault = directives.get("fault") or (fault_header or "").strip().lower() or None
    c.fault = fault if fault in FAULT_KINDS else None
    return c


def _number(raw: str | None) -> float | None:
    """A non-negative number, or None when absent or malformed (ignored, never an error)."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
