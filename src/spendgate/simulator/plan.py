"""What an answer will be before any byte is written: text or tool call, and its length.

Both wire formats render the same plans, so a prompt gets the same answer and the
same token counts whether it arrives as OpenAI or as Anthropic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from spendgate.simulator.content import answer_pieces, apply_stop, default_length, reply_pieces, tool_arguments
from spendgate.simulator.tokens import count_text

REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
TOOL_CALL_OVERHEAD = 5  # tokens around a call's name and arguments


def is_reasoning_model(model: str) -> bool:
    return model.startswith(REASONING_PREFIXES)


def mix(seed: int, i: int) -> int:
    """A different but fixed seed for the i-th choice of one request."""
    x = (seed + i * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 29)


@dataclass(slots=True)
class TextAnswer:
    pieces: list[str]  # one output token each
    finish: str  # "stop" | "length" | "stop_sequence"
    stop_sequence: str | None = None
    reasoning: int = 0
    kind: str = "text"  # the `reply` directive: text, refusal, refusal_flag, unsure, json, bad_json

    @property
    def tokens(self) -> int:
        return len(self.pieces) + self.reasoning

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(slots=True)
class ToolAnswer:
    name: str
    arguments: str  # JSON text, possibly cut short by a token limit
    tokens: int
    finish: str  # "tool" | "length"
    reasoning: int = 0

    @property
    def input(self) -> dict[str, Any]:
        try:
            value = orjson.loads(self.arguments)
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}


def plan_text(
    seed: int,
    wanted: int | None,
    limit: int | None,
    stops: list[str],
    reasoning_model: bool = False,
    reply: str = "text",
    schema: Any = None,
    confidence: float = 0.95,
) -> TextAnswer:
    """Answer length from the directive (`wanted`) or the seed, cut by `limit` and stops.

    `reply` picks the content (see `content.reply_pieces`); `schema` is the JSON
    schema a `json` / `bad_json` answer follows, `confidence` its `confidence` field.
    """
    reasoning = 0
    visible: int | None
    if wanted is not None:
        visible = max(wanted, 0)
        if reasoning_model and visible > 1:
            reasoning = visible // 2
            visible -= reasoning
    else:
        visible = default_length(seed) if reply == "text" else None
        if reasoning_model:
            reasoning = 64 * (1 + (seed >> 40) % 8)
    finish = "stop"
    if reply == "text":
        assert visible is not None
        if limit is not None and reasoning + visible > limit:
            finish = "length"
            reasoning = min(reasoning, limit)
            visible = limit - reasoning
        pieces = answer_pieces(seed, visible, complete=finish == "stop")
    else:
        pieces = reply_pieces(reply, seed, visible, schema, confidence)
        if limit is not None and reasoning + len(pieces) > limit:
            finish = "length"
            reasoning = min(reasoning, limit)
            pieces = pieces[: limit - reasoning]
    matched = None
    if stops and pieces:
        pieces, matched = apply_stop(pieces, stops)
        if matched is not None:
            finish = "stop_sequence"
    return TextAnswer(pieces, finish, matched, reasoning, reply)


def plan_tool_call(seed: int, name: str, schema: Any, wanted: int | None, limit: int | None) -> ToolAnswer:
    arguments = orjson.dumps(tool_arguments(schema, seed)).decode()
    tokens = wanted if wanted is not None else count_text(name) + count_text(arguments) + TOOL_CALL_OVERHEAD
    finish = "tool"
    if limit is not None and tokens > limit:
        tokens, finish = limit, "length"
        arguments = arguments[: max(0, limit - TOOL_CALL_OVERHEAD) * 4]
    return ToolAnswer(name, arguments, tokens, finish)


def split_fragments(text: str, size: int) -> list[str]:
    """Argument JSON in streaming-sized fragments."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
