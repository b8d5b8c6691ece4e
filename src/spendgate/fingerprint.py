"""Privacy-safe fingerprints of a request instead of its text.

`request_hash` finds exact duplicates (what a response cache would have
saved); `prefix_hashes` are chained hashes of fixed-size prompt blocks, so two
requests share the first k ids exactly when they share that prefix (what a
provider prompt cache can reuse).
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

import orjson

_IGNORED = ("stream", "stream_options", "user", "metadata")


def request_hash(body: dict[str, Any]) -> str:
    norm = {k: v for k, v in body.items() if k not in _IGNORED}
    return blake2b(orjson.dumps(norm, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


def prefix_hashes(prompt: str, block_chars: int, limit: int = 64) -> list[str]:
    data = prompt.encode()
    out: list[str] = []
    h = b""
    for start in range(0, min(len(data), block_chars * limit), block_chars):
        block = data[start : start + block_chars]
        if len(block) < block_chars:
            break  # only full blocks can be reused as a cached prefix
        h = blake2b(h + block, digest_size=8).digest()
        out.append(h.hex())
    return out
