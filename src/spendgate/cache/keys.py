"""What makes two requests the same answer: the exact key, the determinism
rule, and the semantic partition + question of single-turn calls.

The exact key hashes everything that changes the output (model, messages,
tools, sampling and format parameters) and nothing that does not: who asks
(`user`, `metadata`), how the answer is delivered (`stream`,
`stream_options`) and provider bookkeeping (`store`, `prompt_cache_key`, …).
The prompt template and version are part of the key, so a new prompt
version never hits an answer given to the old one.

The semantic partition is the same hash with the user's question taken out:
two calls may share a semantically matched answer only if everything but
the wording of the question is equal (model, system prompt, parameters).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from spendgate.pipeline import Call

# fields that never change what the model answers
NEUTRAL_FIELDS = frozenset(
    {"user", "metadata", "stream", "stream_options", "store", "prompt_cache_key", "safety_identifier", "service_tier"}
)


def _digest(parts: list[Any]) -> str:
    return hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def _output_fields(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in NEUTRAL_FIELDS}


def _head(call: Call, policy: str) -> list[Any]:
    """What besides the body decides the answer: the policy (an answer stored under a
    long-lived policy must not serve a call a short-lived one covers), the format and
    model asked for, the prompt template and version, and Anthropic's forwarded
    headers (`anthropic-beta` turns on features such as longer contexts). An alias
    (`auto`) counts with what it resolved to: two features' `auto` are different asks."""
    tags, headers = call.tags, call.headers
    asked = call.requested_model
    if call.route_target is not None and call.route_target.label != asked:
        asked = f"{asked}>{call.route_target.label}"
    head = [policy, call.wire, call.endpoint, asked, tags.get("prompt_template"), tags.get("prompt_version")]
    if call.wire == "anthropic":
        head += [headers.get("anthropic-beta"), headers.get("anthropic-version")]
    return head


def exact_key(call: Call, scope: str, policy: str) -> str:
    """The entry key: the scope (so keys of two scopes never meet) + the request's hash."""
    head = _head(call, policy)
    return f"{scope}|{_digest([*head, _output_fields(call.body)])}"


def deterministic(call: Call) -> bool:
    """Temperature 0 (embeddings always): the same request gets the same answer,
    so serving a stored one changes nothing for the caller."""
    if call.endpoint == "embeddings":
        return True
    t = call.body.get("temperature")
    return isinstance(t, (int, float)) and not isinstance(t, bool) and t == 0


def question(call: Call) -> str | None:
    """The single user question of a single-turn chat (system prompts allowed),
    or None: multi-turn conversations, tool results and media are never
    matched by meaning."""
    if call.endpoint not in ("chat.completions", "messages"):
        return None
    messages = call.body.get("messages")
    if not isinstance(messages, list):
        return None
    found: str | None = None
    for m in messages:
        if not isinstance(m, dict):
            return None
        role = m.get("role")
        if role in ("system", "developer") and call.wire == "openai":
            continue
        if role != "user" or found is not None:
            return None
        found = _text(m.get("content"))
        if found is None:
            return None
    return found if found and found.strip() else None


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and len(content) == 1 and isinstance(content[0], dict):
        part = content[0]
        if part.get("type") == "text" and isinstance(part.get("text"), str) and "cache_control" not in part:
            return part["text"]
    return None


_NUMBER = re.compile(r"\d+(?:[.,:/-]\d+)*")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_NEGATIONS = frozenset({"not", "no", "never", "nor", "none", "nothing", "without", "cannot", "neither", "nobody"})


def guard(question: str) -> str:
    """What a match by meaning must also agree on: the numbers in the question
    and how often it negates. An averaged embedding hardly moves when "order
    12345" becomes "order 67890" or "cancel" becomes "not cancel", but the
    right answer does. A hash (the question's text is never stored)."""
    text = question.lower()
    numbers = sorted(_NUMBER.findall(text))
    negations = sum(1 for w in _WORD.findall(text) if w in _NEGATIONS or w.endswith("n't"))
    return hashlib.blake2b(f"{negations}|{'|'.join(numbers)}".encode(), digest_size=8).hexdigest()


def semantic_partition(call: Call, scope: str, policy: str) -> str:
    """Everything but the question's wording, hashed: who may share a matched answer."""
    body = _output_fields(call.body)
    body["messages"] = [m for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") != "user"]
    head = _head(call, policy)
    return f"{scope}|{_digest([*head, body])}"
