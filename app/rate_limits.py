"""Rate limits: requests per API key, and failed authentications per client address.

Each limit is a token bucket per identifier: a bucket holds `burst` tokens, a request
spends one, and tokens come back at a steady rate (`per minute / 60` a second). A key
may therefore send `rate_limit_burst` requests at once, then `rate_limit_per_key` a
minute; an address may fail authentication `rate_limit_failed_auth` times in a row,
then once every `60 / rate_limit_failed_auth` seconds. A refused request spends nothing,
and its `RateLimited.retry_after` is the exact wait for the next token (at least 1 s).

The algorithm is pyrate-limiter's `TokenBucket` (the GCRA form of a token bucket: one
number per identifier, the time the bucket would be full again), used through its
`StateStore` contract: `store.check(algorithm, rates, now, weight)` answers a
`Decision` with the retry-after in the same step. We chose it over `limits` (the
library behind slowapi and Flask-Limiter) because it is literally a token bucket with
a separate burst, its Redis store runs the whole read-modify-write as one Lua script
(one round trip, atomic across processes, keys expire by themselves), and the call is
plain synchronous code; `limits` offers only window strategies (fixed, moving,
sliding-window counter) whose Retry-After is a window edge, with no burst of its own.
We skip pyrate-limiter's `Limiter` facade: it waits (sleeps) by default, keeps one
bucket per limiter rather than per identifier, and does not hand back the wait.

Storage: Redis when `rate_limit_storage_url` is a redis:// URL, or when it is empty and
the broker is Redis, so every API process shares one budget (keys `graft:rl:…`; the
clock is the wall clock, since the state is compared across hosts). Otherwise, on the
embedded default, the buckets live in this process (`memory://` forces that).

On the event loop (the hot path's async reads), requests of one key that arrive while
its script is in flight wait for the next call, which spends them all at once (weight
n): under load one round trip serves many requests, and each still spends exactly one
token; when the bucket cannot pay for all n, they are decided one by one, in arrival
order, so the answers are those of n separate calls.

Redis trouble never takes the API down: when Redis cannot be reached, the per-key limit
is not enforced (fails open, with one warning) and failed authentications are counted
in this process instead, so a password-guessing client is still slowed down. Redis is
tried again after `REDIS_RETRY_SECONDS`, so an outage costs one timeout per interval,
not one per request.

Thread-safe: the in-process buckets each carry a lock, Redis does the rest atomically,
and redis-py's connection pool is shared by the threads of one process.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import redis
import redis.asyncio
from pyrate_limiter import (
    Decision,
    Duration,
    InMemoryStateStore,
    MonotonicClock,
    Rate,
    RedisStateStore,
    StateStore,
    TokenBucket,
    WallClock,
)

from app.config import Settings, get_settings
from app.errors import RateLimited

log = logging.getLogger(__name__)

KEY_PREFIX = "graft:rl:"
# After a Redis failure, how long to run without it before trying again.
REDIS_RETRY_SECONDS = 5.0
# In-process buckets kept before the full (idle) ones are dropped.
MAX_MEMORY_BUCKETS = 100_000
# Redis stores (one per identifier, small) kept for reuse.
STORES_KEPT = 4096
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

_ALGORITHM = TokenBucket()

Clock = Callable[[], int]
"""Milliseconds, as pyrate-limiter's clocks count them."""


def storage_url(settings: Settings) -> str:
    """Where the buckets live: a Redis URL, or ``memory://`` for this process."""
    url = settings.rate_limit_storage_url.strip()
    if url:
        return url
    if settings.broker_url.startswith(REDIS_SCHEMES):
        return settings.broker_url
    return "memory://"


@dataclass(frozen=True)
class _Limit:
    kind: str  # part of the storage key: "key" or "auth"
    rate: Rate
    message: str  # "... Retry in {retry_after} s." is appended

    @property
    def rates(self) -> list[Rate]:
        return [self.rate]

    def enforce(self, decision: Decision | None) -> None:
        """RateLimited (429) when `decision` refused (None: not enforced, fail open)."""
        if decision is not None and not decision.allowed:
            raise self.refused(decision)

    def refused(self, decision: Decision) -> RateLimited:
        if decision.retry_after_ms is not None:
            seconds = math.ceil(decision.retry_after_ms / 1000)
        else:  # a weight over the burst; never with weight 1, but answer something
            seconds = math.ceil(self.rate.interval / self.rate.limit / 1000)
        seconds = max(1, seconds)
        return RateLimited(f"{self.message} Retry in {seconds} s.", retry_after=seconds)


class _MemoryBuckets:
    """pyrate-limiter's in-process store, one per identifier.

    When there are many, the full ones (idle long enough to have refilled) are
    dropped: they hold nothing a fresh bucket would not.
    """

    def __init__(self, max_buckets: int = MAX_MEMORY_BUCKETS) -> None:
        self._buckets: dict[str, tuple[_Limit, StateStore]] = {}
        self._lock = threading.Lock()
        self._max = max_buckets

    def _store(self, limit: _Limit, ident: str, now: int) -> StateStore:
        name = f"{limit.kind}:{ident}"
        entry = self._buckets.get(name)
        if entry is None:
            with self._lock:
                entry = self._buckets.get(name)
                if entry is None:
                    if len(self._buckets) >= self._max:
                        self._prune(now)
                    entry = self._buckets[name] = (limit, InMemoryStateStore())
        return entry[1]

    def _prune(self, now: int) -> None:
        for name, (limit, store) in list(self._buckets.items()):
            state = store.read(_ALGORITHM, limit.rates)
            if isinstance(state, tuple) and _ALGORITHM.consumed(limit.rates, state, now) == 0:
                del self._buckets[name]
        if len(self._buckets) >= self._max:
            # All busy (an attack from many addresses?): forget the oldest half.
            log.warning("Rate limits: %d busy buckets in memory; forgetting half", self._max)
            for name in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[name]

    def spend(self, limit: _Limit, ident: str, now: int) -> Decision:
        decision = self._store(limit, ident, now).check(_ALGORITHM, limit.rates, now, 1)
        assert isinstance(decision, Decision)
        return decision

    def peek(self, limit: _Limit, ident: str, now: int) -> Decision:
        entry = self._buckets.get(f"{limit.kind}:{ident}")
        if entry is None:
            return Decision()
        state = entry[1].read(_ALGORITHM, limit.rates)
        assert isinstance(state, tuple)
        return _ALGORITHM.step(limit.rates, state, now, 1)[1]

    def __len__(self) -> int:
        return len(self._buckets)


class _RedisBuckets:
    """pyrate-limiter's Redis store: one small hash per identifier, with a TTL."""

    def __init__(self, url: str, prefix: str) -> None:
        options: dict[str, Any] = {
            "socket_timeout": 0.25,
            "socket_connect_timeout": 0.25,
            "health_check_interval": 30,
        }
        self.client: redis.Redis = redis.Redis.from_url(url, **options)
        self._async_client = partial(redis.asyncio.Redis.from_url, url, **options)
        self._async: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None
        # Per identifier whose script is in flight on the loop: the requests waiting
        # for the next one (spend_async).
        self._waiting: dict[str, list[asyncio.Future[Decision]]] = {}
        self._drains: set[asyncio.Task[None]] = set()
        kw = self.client.connection_pool.connection_kwargs
        self.where = f"{kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}/{kw.get('db', 0)}"
        self._prefix = prefix

        # A store registers (hashes) its Lua script on first use: keeping the stores of
        # recent identifiers makes that once per identifier, not once per request.
        self._stores = lru_cache(maxsize=STORES_KEPT)(RedisStateStore)

    def _store(self, limit: _Limit, ident: str, client: Any = None) -> StateStore:
        store: StateStore = self._stores(
            client or self.client, f"{self._prefix}{limit.kind}:{ident}"
        )
        return store

    def spend(self, limit: _Limit, ident: str, now: int) -> Decision:
        decision = self._store(limit, ident).check(_ALGORITHM, limit.rates, now, 1)
        assert isinstance(decision, Decision)
        return decision

    async def spend_async(self, limit: _Limit, ident: str, clock: Clock) -> Decision:
        """spend() on redis.asyncio's client, for the event loop's own use.

        Requests of one identifier that arrive while its script is in flight wait for
        the next call, which spends them together (weight n): under load one round trip
        serves many requests, and each one still spends exactly one token. When the
        bucket cannot pay for all n, they are decided one by one, in arrival order, so
        the answers are those of n separate calls.
        """
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            # A client per event loop: its connections belong to the loop; so do the
            # waiting requests.
            self._async = (loop, self._async_client())
            self._waiting.clear()
        name = f"{limit.kind}:{ident}"
        answer: asyncio.Future[Decision] = loop.create_future()
        queue = self._waiting.get(name)
        if queue is None:
            # A task of its own, not the first request's: a request cancelled by its
            # client (a disconnect) must not take the others' answers down with it.
            queue = self._waiting[name] = []
            drain = loop.create_task(self._drain(limit, ident, clock, name))
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        queue.append(answer)
        return await answer

    async def _drain(self, limit: _Limit, ident: str, clock: Clock, name: str) -> None:
        try:
            while batch := self._waiting[name]:
                self._waiting[name] = []
                await self._decide(limit, ident, clock, batch)
        finally:
            for waiting in self._waiting.pop(name, []):
                waiting.cancel()

    async def _decide(
        self, limit: _Limit, ident: str, clock: Clock, batch: list[asyncio.Future[Decision]]
    ) -> None:
        try:
            decision = await self._check_async(limit, ident, clock(), len(batch))
            if decision.allowed or len(batch) == 1:
                decisions = [decision] * len(batch)
            else:
                decisions = [await self._check_async(limit, ident, clock(), 1) for _ in batch]
        except Exception as exc:  # Redis trouble: each request takes its fallback
            for waiting in batch:
                if not waiting.done():
                    waiting.set_exception(exc)
            return
        except BaseException:  # the loop is closing
            for waiting in batch:
                waiting.cancel()
            raise
        for waiting, decided in zip(batch, decisions, strict=True):
            if not waiting.done():  # its request may have been cancelled meanwhile
                waiting.set_result(decided)

    async def _check_async(self, limit: _Limit, ident: str, now: int, weight: int) -> Decision:
        assert self._async is not None
        store = self._store(limit, ident, self._async[1])
        reply = store.check(_ALGORITHM, limit.rates, now, weight)
        decision = await reply if inspect.isawaitable(reply) else reply
        assert isinstance(decision, Decision)
        return decision

    def peek(self, limit: _Limit, ident: str, now: int) -> Decision:
        state = self._store(limit, ident).read(_ALGORITHM, limit.rates)
        assert isinstance(state, tuple)
        return _ALGORITHM.step(limit.rates, state, now, 1)[1]

    def close(self) -> None:
        self.client.close()


class RateLimits:
    """The API's rate limits, configured from `settings`.

    `namespace` separates this instance's Redis keys from others' (tests); in-process
    buckets always belong to the instance. `clock` (milliseconds) replaces the library's
    clock: monotonic in process, the wall clock with Redis.
    """

    def __init__(
        self, settings: Settings, *, namespace: str = "", clock: Clock | None = None
    ) -> None:
        self.enabled = settings.rate_limits_enabled
        self.per_key = _Limit(
            "key",
            Rate(settings.rate_limit_per_key, Duration.MINUTE, burst=settings.rate_limit_burst),
            f"Too many requests for this API key: the limit is {settings.rate_limit_per_key} "
            f"per minute, in bursts of up to {settings.rate_limit_burst}.",
        )
        self.failed_auth = _Limit(
            "auth",
            Rate(settings.rate_limit_failed_auth, Duration.MINUTE),
            "Too many failed authentications from this address: the limit is "
            f"{settings.rate_limit_failed_auth} per minute.",
        )
        url = storage_url(settings)
        self._memory = _MemoryBuckets()
        self._redis: _RedisBuckets | None = None
        if url.startswith(REDIS_SCHEMES):
            prefix = f"{KEY_PREFIX}{namespace}:" if namespace else KEY_PREFIX
            if self.enabled:
                self._redis = _RedisBuckets(url, prefix)
        elif url != "memory://":
            raise ValueError(
                f"GRAFT_RATE_LIMIT_STORAGE_URL must be redis://…, rediss://…, unix://… or "
                f"memory://, not {url.split('://')[0]}://…"
            )
        self.backend = "redis" if url.startswith(REDIS_SCHEMES) else "memory"
        self._clock: Clock = clock or (
            WallClock().now if self._redis is not None else MonotonicClock().now
        )
        self._local_clock: Clock = clock or MonotonicClock().now
        self._redis_retry_at = 0.0

    # -- the three checks ----------------------------------------------------

    def hit_key(self, key_id: str) -> None:
        """Spend one request of `key_id`'s budget; RateLimited (429) when there is none."""
        if self.enabled:
            self.per_key.enforce(self._spend(self.per_key, key_id, fallback=False))

    def check_failed_auth(self, address: str) -> None:
        """RateLimited (429) when `address` may not try to authenticate again yet."""
        if not self.enabled:
            return
        limit = self.failed_auth
        decision: Decision | None = None
        if self._redis_usable():
            assert self._redis is not None
            try:
                decision = self._redis.peek(limit, address, self._clock())
            except (redis.RedisError, OSError) as exc:
                self._redis_failed(exc)
        if decision is None:
            decision = self._memory.peek(limit, address, self._local_clock())
        if not decision.allowed:
            raise limit.refused(decision)

    def record_failed_auth(self, address: str) -> None:
        """Count one failed authentication from `address`."""
        if self.enabled:
            self._spend(self.failed_auth, address, fallback=True)

    def count_failed_auth(self, address: str) -> None:
        """A failed authentication from `address`: RateLimited (429) when it may not
        try again yet, else counted. Spending refuses exactly where peeking would (a
        refused request spends nothing), so one round trip does both."""
        if self.enabled:
            self.failed_auth.enforce(self._spend(self.failed_auth, address, fallback=True))

    # -- the same, in the event loop (the API's async hot path) --------------

    async def hit_key_async(self, key_id: str) -> None:
        if self.enabled:
            self.per_key.enforce(await self._spend_async(self.per_key, key_id, fallback=False))

    async def count_failed_auth_async(self, address: str) -> None:
        if self.enabled:
            limit = self.failed_auth
            limit.enforce(await self._spend_async(limit, address, fallback=True))

    def close(self) -> None:
        """Release the Redis connections (a later call opens them again)."""
        if self._redis is not None:
            self._redis.close()

    # -- storage -------------------------------------------------------------

    def _spend(self, limit: _Limit, ident: str, *, fallback: bool) -> Decision | None:
        """The decision, from Redis when usable; else in process, or None (fail open)."""
        if self._redis_usable():
            assert self._redis is not None
            try:
                return self._redis.spend(limit, ident, self._clock())
            except (redis.RedisError, OSError) as exc:
                self._redis_failed(exc)
        return self._in_process(limit, ident, fallback=fallback)

    async def _spend_async(self, limit: _Limit, ident: str, *, fallback: bool) -> Decision | None:
        if self._redis_usable():
            assert self._redis is not None
            try:
                return await self._redis.spend_async(limit, ident, self._clock)
            except (redis.RedisError, OSError) as exc:
                self._redis_failed(exc)
        return self._in_process(limit, ident, fallback=fallback)

    def _in_process(self, limit: _Limit, ident: str, *, fallback: bool) -> Decision | None:
        """Without Redis: the in-process bucket, or None (fail open) when Redis is
        configured but away and `limit` does not fall back."""
        if self._redis is None or fallback:
            return self._memory.spend(limit, ident, self._local_clock())
        return None

    def _redis_usable(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._redis_retry_at

    def _redis_failed(self, exc: Exception) -> None:
        assert self._redis is not None
        if time.monotonic() < self._redis_retry_at:
            return  # the same outage, met by another request of a shared round trip
        self._redis_retry_at = time.monotonic() + REDIS_RETRY_SECONDS
        log.warning(
            "Rate limits: Redis at %s failed (%s: %s); for the next %.0f s per-key limits "
            "are off and failed authentications are counted in this process",
            self._redis.where,
            type(exc).__name__,
            exc,
            REDIS_RETRY_SECONDS,
        )


# -- the shared instance -------------------------------------------------------

_shared_lock = threading.Lock()
_shared: tuple[tuple[object, ...], RateLimits] | None = None
_namespace = ""


def _config_key(settings: Settings) -> tuple[object, ...]:
    return (
        settings.rate_limits_enabled,
        settings.rate_limit_per_key,
        settings.rate_limit_burst,
        settings.rate_limit_failed_auth,
        storage_url(settings),
        _namespace,
    )


def get_rate_limits() -> RateLimits:
    """The process's RateLimits, rebuilt when a setting that matters changes."""
    global _shared
    key = _config_key(get_settings())
    shared = _shared
    if shared is not None and shared[0] == key:
        return shared[1]
    with _shared_lock:
        if _shared is None or _shared[0] != key:
            settings = get_settings()
            _shared = (_config_key(settings), RateLimits(settings, namespace=_namespace))
        return _shared[1]


def reset_rate_limits(namespace: str = "") -> None:
    """Forget the shared RateLimits; the next one keeps its Redis keys under `namespace`.

    For tests: call it between tests (with a fresh namespace when they share a Redis),
    so no test inherits another's spent budget.
    """
    global _shared, _namespace
    with _shared_lock:
        old, _shared, _namespace = _shared, None, namespace
    if old is not None:
        old[1].close()
