"""Anthropic prompt-cache breakpoints that spendgate adds on the way upstream.

Anthropic caches a prompt prefix only where the request marks it with
`cache_control`. Many clients never do — and a client speaking OpenAI's
format cannot. With `prompt_cache.insert_breakpoints`, the body sent to an
Anthropic deployment gets a breakpoint on its last tool definition and on its
last system block, each when the prefix up to it (Anthropic caches tools,
then system, then messages) may reach the model's minimum cacheable length.

The length test uses spendgate's token upper bound (`controls/tokens.py`), so
a prefix that can reach the minimum is always marked; one that turns out
shorter is simply not cached by Anthropic, at no charge. A request that sets
`cache_control` anywhere itself is left exactly as it is, so spendgate never
moves a client's own breakpoints nor pushes it past Anthropic's limit of 4.
"""

from __future__ import annotations

from typing import Any

from spendgate.config import PromptCacheConfig
from spendgate.controls.tokens import anthropic_prompt

MAX_BREAKPOINTS = 4  # Anthropic refuses a request with more

# Minimum cacheable prefix, in tokens, by model name (first match wins; names
# are compared lower-case with dots as dashes). Anthropic's prompt-caching
# documentation; shorter marked prefixes are processed without caching.
MIN_CACHEABLE_TOKENS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-5", 4096),
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-7", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
    ("claude-opus-5", 512),
    ("claude-fable-5", 512),
    ("claude-mythos-5", 512),
)
DEFAULT_MIN_CACHEABLE_TOKENS = 1024  # Sonnet 3.7–4.6, Opus 3–4.1 and 4.8, Sonnet 5, anything unknown

_KEY = "cache_control"


def min_cacheable_tokens(model: str) -> int:
    name = model.lower().replace(".", "-")
    for fragment, tokens in MIN_CACHEABLE_TOKENS:
        if fragment in name:
            return tokens
    return DEFAULT_MIN_CACHEABLE_TOKENS


def has_cache_control(value: Any) -> bool:
    """Whether a `cache_control` field appears anywhere in the body (top level included)."""
    if isinstance(value, dict):
        return _KEY in value or any(has_cache_control(v) for v in value.values() if isinstance(v, (dict, list)))
    if isinstance(value, list):
        return any(has_cache_control(v) for v in value if isinstance(v, (dict, list)))
    return False


def breakpoint_changes(body: dict[str, Any], model: str, settings: PromptCacheConfig) -> dict[str, Any]:
    """The `tools`/`system` fields to replace in an Anthropic Messages body; {} for none.

    Never mutates `body` (it may be the client's parsed request).
    """
    if has_cache_control(body):
        return {}
    minimum = settings.min_tokens if settings.min_tokens is not None else min_cacheable_tokens(model)
    control: dict[str, str] = {"type": "ephemeral"}
    if settings.ttl == "1h":
        control["ttl"] = "1h"
    changes: dict[str, Any] = {}
    tools = body.get("tools")
    tools = tools if isinstance(tools, list) and tools else None
    if tools and isinstance(tools[-1], dict) and _bound({"tools": tools}, model) >= minimum:
        changes["tools"] = [*tools[:-1], {**tools[-1], _KEY: control}]
    system = body.get("system")
    if system and _bound({"tools": tools, "system": system}, model) >= minimum:
        if isinstance(system, str):
            changes["system"] = [{"type": "text", "text": system, _KEY: control}]
        elif isinstance(system, list) and isinstance(system[-1], dict):
            changes["system"] = [*system[:-1], {**system[-1], _KEY: control}]
    assert len(changes) <= MAX_BREAKPOINTS
    return changes


def action(changes: dict[str, Any], settings: PromptCacheConfig) -> str:
    """What the ledger's `control_actions` records, e.g. `prompt_cache:breakpoints=2`."""
    return f"prompt_cache:breakpoints={len(changes)}" + (":1h" if settings.ttl == "1h" else "")


def _bound(prefix: dict[str, Any], model: str) -> int:
    return anthropic_prompt(prefix).bound([model])
