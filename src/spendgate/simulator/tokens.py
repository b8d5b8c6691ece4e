"""Token counting that approximates tiktoken, and the prompt digest built alongside.

One token per 4 UTF-8 bytes is close to cl100k/o200k for English prose and is
identical for identical input, which is what metering tests need. `PromptBuilder`
walks a request once: it counts, hashes (for deterministic answers and prompt
caching) and picks up `[[sim:…]]` directives on the way.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from spendgate.simulator.directives import DIRECTIVE_MARK, parse_directives

IMAGE_TOKENS = 85  # OpenAI's low-detail image cost; a fixed, plausible number
ANTHROPIC_IMAGE_TOKENS = 1600


def count_text(text: str) -> int:
    """Tokens in a piece of text: ceil(utf-8 bytes / 4)."""
    if not text:
        return 0
    n = len(text) if text.isascii() else len(text.encode())
    return (n + 3) >> 2


def count_json(value: Any) -> int:
    return (len(orjson.dumps(value)) + 3) >> 2


class PromptBuilder:
    """Accumulates a prompt's parts, token count, directives and cache breakpoints."""

    __slots__ = ("parts", "tokens", "directives", "marks")

    def __init__(self, model: str, overhead: int = 0) -> None:
        self.parts: list[str] = [model]
        self.tokens = overhead
        self.directives: dict[str, str] = {}
        self.marks: list[tuple[int, int, bool]] = []  # (number of parts, tokens so far, one-hour TTL)

    def text(self, text: str, overhead: int = 0) -> None:
        self.parts.append(text)
        self.tokens += count_text(text) + overhead
        if DIRECTIVE_MARK in text:
            self.directives.update(parse_directives(text))

    def value(self, value: Any, overhead: int = 0) -> None:
        """A non-text part (tool definition, tool call, unknown block): counted as JSON."""
        if isinstance(value, str):
            self.text(value, overhead)
            return
        blob = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        self.text(blob, overhead)

    def fixed(self, marker: str, tokens: int) -> None:
        """A part with a fixed cost (an image): hashed by its marker."""
        self.parts.append(marker)
        self.tokens += tokens

    def mark(self, one_hour: bool = False) -> None:
        """A cache breakpoint after everything added so far."""
        self.marks.append((len(self.parts), self.tokens, one_hour))

    def digest(self) -> int:
        """A 64-bit hash of the whole prompt, the seed of the answer."""
        h = hashlib.blake2b(digest_size=8)
        for p in self.parts:
            h.update(p.encode())
            h.update(b"\x00")
        return int.from_bytes(h.digest(), "little")

    def mark_digests(self) -> list[tuple[bytes, int, bool]]:
        """(prefix hash, prefix tokens, one-hour TTL) for each breakpoint, in order."""
        out: list[tuple[bytes, int, bool]] = []
        h = hashlib.blake2b(digest_size=16)
        done = 0
        for upto, tokens, one_hour in self.marks:
            for p in self.parts[done:upto]:
                h.update(p.encode())
                h.update(b"\x00")
            done = upto
            out.append((h.copy().digest(), tokens, one_hour))
        return out

    def aligned_prefix_digests(self, first: int = 1024, step: int = 128) -> list[tuple[bytes, int]]:
        """Hashes of the prompt's prefixes at `first`, `first+step`, … tokens (OpenAI-style)."""
        blob = "\x00".join(self.parts).encode()
        first_b, step_b = first * 4, step * 4
        if len(blob) < first_b:
            return []
        out: list[tuple[bytes, int]] = []
        h = hashlib.blake2b(digest_size=16)
        view = memoryview(blob)
        h.update(view[:first_b])
        out.append((h.copy().digest(), first))
        pos = first_b
        while pos + step_b <= len(blob):
            h.update(view[pos : pos + step_b])
            pos += step_b
            out.append((h.copy().digest(), pos // 4))
        return out
