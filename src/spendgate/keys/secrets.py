"""Key secrets: how they are made, and how they are kept (as a hash only).

A secret is `sk-sg-` + 32 random bytes (URL-safe base64, 256 bits). With that
much entropy a plain SHA-256 is as safe to store as a slow KDF would be: a
slow hash only protects guessable (low-entropy) passwords, and nobody can
enumerate 2**256 secrets. A fast hash keeps authentication a microsecond.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SECRET_PREFIX = "sk-sg-"
PREFIX_CHARS = 10  # what listings show: "sk-sg-AbCd" identifies a key, reveals ~24 bits


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def hash_secret(secret: str) -> str:
    """SHA-256 hex of the secret: what the store keeps and indexes by."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[:PREFIX_CHARS]


def same_hash(presented: str, stored: str) -> bool:
    """Constant-time comparison, so timing never tells how much of a hash matched."""
    return hmac.compare_digest(presented, stored)
