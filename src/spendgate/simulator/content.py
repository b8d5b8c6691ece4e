"""Deterministic answers: English-ish text made of one-token pieces, and tool arguments.

A long piece stream is built once at import; an answer is a slice of it that starts
at a sentence chosen by the request's hash. Every piece is one output token, so
`completion_tokens` equals the number of pieces sent, exactly, and the same request
always gets the same answer.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

_DET = ("the", "each", "every", "this", "our", "a", "one", "that")
_ADJ = ("clear", "small", "large", "daily", "monthly", "simple", "careful", "useful", "recent", "shared", "new", "exact", "quiet", "steady", "early")
_NOUN = (
    "report", "team", "model", "budget", "answer", "request", "price", "cache", "service", "plan", "result", "group",
    "question", "reason", "example", "change", "review", "limit", "token", "system", "project", "record", "number",
    "customer", "process", "window", "summary", "feature", "message", "account",
)
_VERB = (
    "shows", "tracks", "explains", "needs", "keeps", "reaches", "follows", "changes", "reduces", "covers", "helps",
    "describes", "supports", "includes", "finds", "checks", "moves", "builds", "meets", "saves",
)
_PREP = ("for", "with", "in", "across", "after", "before", "from", "under", "over", "within")
_ADV = ("often", "usually", "still", "now", "also", "rarely", "always", "quickly")
_CONJ = ("and", "but", "while", "because", "so")
_WORDS = _NOUN + _ADJ + _VERB  # vocabulary for short string values
_STREAM_SIZE = 1 << 16


def _clause(rng: random.Random) -> list[str]:
    words = [rng.choice(_DET)]
    if rng.random() < 0.5:
        words.append(rng.choice(_ADJ))
    words.append(rng.choice(_NOUN))
    if rng.random() < 0.25:
        words.append(rng.choice(_ADV))
    words.append(rng.choice(_VERB))
    words.append(rng.choice(_DET))
    if rng.random() < 0.4:
        words.append(rng.choice(_ADJ))
    words.append(rng.choice(_NOUN))
    if rng.random() < 0.5:
        words += [rng.choice(_PREP), rng.choice(_DET), rng.choice(_NOUN)]
    return words


def _build_stream() -> tuple[list[str], list[int]]:
    """Pieces with their leading spaces, and the indices where sentences start."""
    rng = random.Random(1234567)
    pieces: list[str] = []
    starts: list[int] = []
    new_paragraph = True
    while len(pieces) < _STREAM_SIZE:
        starts.append(len(pieces))
        words = _clause(rng)
        if rng.random() < 0.35:
            words = words + [","] + [rng.choice(_CONJ)] + _clause(rng)
        for i, word in enumerate(words):
            if word == ",":
                pieces.append(",")
            elif i == 0:
                word = word.capitalize()
                pieces.append(word if new_paragraph else " " + word)
            else:
                pieces.append(" " + word)
        pieces.append(".")
        new_paragraph = rng.random() < 0.15
        if new_paragraph:
            pieces.append("\n\n")
    return pieces, starts


_PIECES, _STARTS = _build_stream()
_PUNCT = frozenset((".", ",", "\n\n"))


def answer_pieces(seed: int, count: int, *, complete: bool = True) -> list[str]:
    """`count` one-token pieces starting at a sentence chosen by `seed`.

    With `complete`, the last piece is a full stop, so a finished answer reads as
    finished; a length-cut answer (`complete=False`) stops mid-sentence like real ones.
    """
    if count <= 0:
        return []
    start = _STARTS[seed % len(_STARTS)]
    out = _PIECES[start : start + count]
    while len(out) < count:
        out.extend(_PIECES[: count - len(out)])
    out[0] = out[0].lstrip()
    if complete and count > 1 and out[-1] not in _PUNCT:
        out[-1] = "."
    if out[-1] == "\n\n":
        out[-1] = "."
    return out


def default_length(seed: int, low: int = 20, high: int = 300) -> int:
    """A realistic answer length, skewed towards short answers, fixed by `seed`."""
    span = high - low
    a, b = seed % (span + 1), (seed >> 20) % (span + 1)
    return low + min(a, b)


def apply_stop(pieces: list[str], stops: list[str]) -> tuple[list[str], str | None]:
    """Cut the answer before the first stop sequence, as the real APIs do.

    Returns the pieces that remain (the last one possibly shortened) and the stop
    sequence that matched, if any.
    """
    if not stops:
        return pieces, None
    text = "".join(pieces)
    best, matched = -1, None
    for s in stops:
        if s:
            i = text.find(s)
            if i >= 0 and (best < 0 or i < best):
                best, matched = i, s
    if matched is None:
        return pieces, None
    kept: list[str] = []
    pos = 0
    for p in pieces:
        if pos + len(p) <= best:
            kept.append(p)
            pos += len(p)
            continue
        if best > pos:
            kept.append(p[: best - pos])
        break
    return kept, matched


# ---- reply kinds (the `reply` directive) ----------------------------------------

REFUSAL_TEXT = "I'm sorry, but I can't help with that."
UNSURE_LEAD = "I'm not sure, but"
_SPLIT = re.compile(r" ?[A-Za-z']+| ?[0-9]+|\s+|[^A-Za-z0-9'\s]+")


def split_pieces(text: str) -> list[str]:
    """Text in word-sized pieces, each counted as one output token; they join back to `text`."""
    return _SPLIT.findall(text)


def reply_pieces(kind: str, seed: int, count: int | None, schema: Any = None, confidence: float = 0.95) -> list[str]:
    """The pieces of a non-default reply: a refusal, a hedge, a JSON object or almost-JSON.

    `count` (an `output_tokens` directive) makes it exactly that long: a refusal or
    hedge goes on with ordinary sentences, a JSON answer grows its text field (or,
    with a schema, is padded with trailing spaces); too small a count cuts it short.
    """
    if kind in ("refusal", "refusal_flag"):
        lead = split_pieces(REFUSAL_TEXT)
        return lead if count is None else _continue(lead, seed, count)
    if kind == "unsure":
        lead = split_pieces(UNSURE_LEAD)
        return _continue(lead, seed, count if count is not None else default_length(seed), lower=True)
    bad = kind == "bad_json"
    if schema is not None:
        text = json.dumps(tool_arguments(schema, seed), ensure_ascii=False)
        pieces = split_pieces(text[:-1] + ",}" if bad else text)
        if count is None or count == len(pieces):
            return pieces
        return pieces[:count] if count < len(pieces) else pieces + [" "] * (count - len(pieces))
    head = split_pieces('{"answer": "')
    tail = split_pieces(f'", "confidence": {confidence}' + (",}" if bad else "}"))
    body_n = count - len(head) - len(tail) if count is not None else default_length(seed, 8, 60)
    if body_n < 1:
        return (head + tail)[: max(count or 0, 0)]
    body = [json.dumps(p, ensure_ascii=False)[1:-1] for p in answer_pieces(seed, body_n)]
    return head + body + tail


def _continue(lead: list[str], seed: int, total: int, lower: bool = False) -> list[str]:
    """`lead`, then ordinary sentences up to `total` pieces (or `lead` cut to `total`)."""
    if total <= len(lead):
        return lead[: max(total, 0)]
    rest = answer_pieces(seed, total - len(lead))
    first = rest[0]
    if lower and len(first) > 1 and not first[1:2].isupper():
        first = first[0].lower() + first[1:]
    rest[0] = " " + first
    return lead + rest


# ---- tool arguments ------------------------------------------------------------

_HINTS = {
    "city": "Paris",
    "location": "Paris, France",
    "country": "France",
    "query": "quarterly cost report",
    "q": "quarterly cost report",
    "email": "alex@example.com",
    "name": "Alex",
    "url": "https://example.com",
    "date": "2025-01-15",
    "unit": "celsius",
    "language": "en",
}


def tool_arguments(schema: Any, seed: int) -> dict[str, Any]:
    """Deterministic arguments that satisfy a JSON schema's shape (object at top)."""
    value = _example(schema if isinstance(schema, dict) else {}, "", seed, 0)
    return value if isinstance(value, dict) else {"value": value}


def _example(schema: dict[str, Any], name: str, seed: int, depth: int) -> Any:
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options and isinstance(options[0], dict):
            return _example(options[0], name, seed, depth)
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props = schema.get("properties")
        if not isinstance(props, dict) or depth > 4:
            return {}
        return {k: _example(v if isinstance(v, dict) else {}, k, seed + i, depth + 1) for i, (k, v) in enumerate(props.items())}
    if kind == "array":
        items = schema.get("items")
        return [_example(items if isinstance(items, dict) else {}, name, seed, depth + 1)] if depth <= 4 else []
    if kind == "integer":
        low = schema.get("minimum", 1)
        return int(low if isinstance(low, (int, float)) else 1) + seed % 10
    if kind == "number":
        return round(1 + (seed % 1000) / 100, 2)
    if kind == "boolean":
        return seed % 2 == 0
    if kind == "null":
        return None
    hint = _HINTS.get(name.lower())
    if hint is not None:
        return hint
    if schema.get("format") in ("date", "date-time"):
        return "2025-01-15" if schema["format"] == "date" else "2025-01-15T09:30:00Z"
    return f"{_WORDS[seed % len(_WORDS)]} {_WORDS[(seed >> 8) % len(_WORDS)]}"
