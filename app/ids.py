"""Prefixed, roughly time-ordered ids: `ds_…`, `job_…`, `mdl_…`, `team_…`, `key_…`.

The first 12 hex digits are the creation time in milliseconds, so ordering by id is
ordering by creation, which is what cursor pagination relies on.
"""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"
