"""How a job's failure is classified: final (never retried) or transient (retried)."""

from __future__ import annotations


class JobFailed(Exception):
    """A failure that will not change on a retry: bad spec, bad data, missing weights."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TransientFailure(Exception):
    """A failure worth another attempt on another worker: out of memory, lost connection."""
