"""Identifiers shaped like the real ones (chatcmpl-…, msg_01…, toolu_01…, call_…)."""

from __future__ import annotations

import os

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(nbytes: int, length: int) -> str:
    n = int.from_bytes(os.urandom(nbytes), "little")
    out = []
    for _ in range(length):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(out)


def request_id(prefix: str = "req_") -> str:
    if prefix == "req_":
        return "req_" + os.urandom(16).hex()
    return prefix + _base62(16, 21)


def chat_id() -> str:
    return "chatcmpl-" + _base62(24, 29)


def completion_id() -> str:
    return "cmpl-" + _base62(24, 29)


def call_id() -> str:
    return "call_" + _base62(24, 24)


def message_id() -> str:
    return "msg_01" + _base62(24, 22)


def tool_use_id() -> str:
    return "toolu_01" + _base62(24, 22)


def fingerprint(model: str) -> str:
    """A stable `system_fingerprint` per model name."""
    import hashlib

    return "fp_" + hashlib.blake2b(model.encode(), digest_size=5).hexdigest()
