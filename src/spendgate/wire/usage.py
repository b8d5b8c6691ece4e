"""Usage blocks of each wire format, normalized to `TokenUsage`.

Normalized `input_tokens` counts every prompt token. OpenAI's `prompt_tokens`
already does; Anthropic's `input_tokens` excludes cache reads and writes, so
they are added back. Anthropic splits cache writes by TTL in
`cache_creation.{ephemeral_5m,ephemeral_1h}_input_tokens`; the one-hour part
is kept as `cache_write_1h_tokens` (billed at a higher price).
"""

from __future__ import annotations

from typing import Any

from spendgate.pricing.catalog import TokenUsage


def _int(v: Any) -> int:
    """A token count; anything else (bool, string, negative) counts as 0."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return 0
    return max(0, int(v))


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def from_openai(usage: Any) -> TokenUsage:
    if not isinstance(usage, dict) or not usage:
        return TokenUsage()
    prompt = usage.get("prompt_tokens")
    if prompt is None:  # Responses-style names
        prompt = usage.get("input_tokens")
    completion = usage.get("completion_tokens")
    if completion is None:
        completion = usage.get("output_tokens")
    pdet = _dict(usage.get("prompt_tokens_details") or usage.get("input_tokens_details"))
    cdet = _dict(usage.get("completion_tokens_details") or usage.get("output_tokens_details"))
    return TokenUsage(
        input_tokens=_int(prompt),
        output_tokens=_int(completion),
        cache_read_tokens=_int(pdet.get("cached_tokens")),
        cache_write_tokens=_int(pdet.get("cache_write_tokens")),
        reasoning_tokens=_int(cdet.get("reasoning_tokens")),
    )


def from_anthropic(usage: Any) -> TokenUsage:
    if not isinstance(usage, dict) or not usage:
        return TokenUsage()
    read = _int(usage.get("cache_read_input_tokens"))
    write = _int(usage.get("cache_creation_input_tokens"))
    odet = _dict(usage.get("output_tokens_details"))
    return TokenUsage(
        input_tokens=_int(usage.get("input_tokens")) + read + write,
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=read,
        cache_write_tokens=write,
        reasoning_tokens=_int(odet.get("thinking_tokens")),
        cache_write_1h_tokens=min(write, _int(_dict(usage.get("cache_creation")).get("ephemeral_1h_input_tokens"))),
    )


def to_openai(u: TokenUsage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens},
    }
    if u.cache_write_tokens:
        out["prompt_tokens_details"]["cache_write_tokens"] = u.cache_write_tokens
    if u.reasoning_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": u.reasoning_tokens}
    return out


def to_anthropic(u: TokenUsage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "input_tokens": u.input_tokens - u.cache_read_tokens - u.cache_write_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
    }
    if u.cache_write_1h_tokens:  # absent = all five-minute writes, as Anthropic's older responses read
        out["cache_creation"] = {
            "ephemeral_5m_input_tokens": u.cache_write_tokens - u.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": u.cache_write_1h_tokens,
        }
    return out
