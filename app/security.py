"""API keys: generated with 256 bits of entropy, shown once, stored as a sha256 digest."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "graft_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)
