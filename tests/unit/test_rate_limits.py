"""Rate limits: token buckets per API key and failed authentications per address."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from app.config import Settings, get_settings
from app.errors import RateLimited
from app.rate_limits import KEY_PREFIX, RateLimits, get_rate_limits, reset_rate_limits


class FakeClock:
    """Milliseconds that move only when told to."""

    def __init__(self, start: int = 1_000_000) -> None:
        self.ms = start

    def __call__(self) -> int:
        return self.ms


def settings(**kw: Any) -> Settings:
    values: dict[str, Any] = {
        "rate_limit_storage_url": "memory://",
        "rate_limit_per_key": 60,
        "rate_limit_burst": 5,
        "rate_limit_failed_auth": 3,
    }
    values.update(kw)
    return Settings(**values)


@pytest.fixture(autouse=True)
def _fresh_shared() -> Iterator[None]:
    reset_rate_limits()
    yield
    reset_rate_limits()


# -- in process ----------------------------------------------------------------


def test_burst_then_429_naming_the_limit() -> None:
    limits = RateLimits(settings(), clock=FakeClock())
    assert limits.backend == "memory"
    for _ in range(5):
        limits.hit_key("key_a")
    with pytest.raises(RateLimited) as caught:
        limits.hit_key("key_a")
    err = caught.value
    assert err.status_code == 429
    assert err.code == "rate_limited"
    # 60 a minute: the next token comes in 1 s.
    assert err.retry_after == 1
    assert "this API key" in err.message
    assert "60 per minute" in err.message
    assert "bursts of up to 5" in err.message
    assert err.message.endswith("Retry in 1 s.")
    assert err.to_dict()["error"]["code"] == "rate_limited"


def test_refill_at_the_steady_rate() -> None:
    clock = FakeClock()
    limits = RateLimits(settings(), clock=clock)
    for _ in range(5):
        limits.hit_key("key_a")
    with pytest.raises(RateLimited):
        limits.hit_key("key_a")
    # A refused request spends nothing; one second brings back exactly one token.
    clock.ms += 1000
    limits.hit_key("key_a")
    with pytest.raises(RateLimited):
        limits.hit_key("key_a")
    # A long pause refills the bucket to its burst, never beyond.
    clock.ms += 10 * 60_000
    for _ in range(5):
        limits.hit_key("key_a")
    with pytest.raises(RateLimited):
        limits.hit_key("key_a")


def test_retry_after_is_the_wait_for_the_next_token() -> None:
    limits = RateLimits(settings(rate_limit_per_key=6, rate_limit_burst=1), clock=FakeClock())
    limits.hit_key("key_a")
    with pytest.raises(RateLimited) as caught:
        limits.hit_key("key_a")
    assert caught.value.retry_after == 10
    assert "Retry in 10 s." in caught.value.message


def test_keys_are_independent() -> None:
    limits = RateLimits(settings(), clock=FakeClock())
    for _ in range(5):
        limits.hit_key("key_a")
    with pytest.raises(RateLimited):
        limits.hit_key("key_a")
    for _ in range(5):
        limits.hit_key("key_b")


def test_instances_do_not_share_memory() -> None:
    first = RateLimits(settings(), clock=FakeClock())
    for _ in range(5):
        first.hit_key("key_a")
    with pytest.raises(RateLimited):
        first.hit_key("key_a")
    RateLimits(settings(), clock=FakeClock()).hit_key("key_a")


def test_failed_auth_per_address() -> None:
    clock = FakeClock()
    limits = RateLimits(settings(), clock=clock)
    for _ in range(3):
        limits.check_failed_auth("10.0.0.1")
        limits.record_failed_auth("10.0.0.1")
    with pytest.raises(RateLimited) as caught:
        limits.check_failed_auth("10.0.0.1")
    err = caught.value
    # 3 a minute: one more try every 20 s.
    assert err.retry_after == 20
    assert "failed authentications from this address" in err.message
    assert "3 per minute" in err.message
    # Checking spends nothing, other addresses are unaffected, and API keys too.
    with pytest.raises(RateLimited):
        limits.check_failed_auth("10.0.0.1")
    limits.check_failed_auth("10.0.0.2")
    limits.hit_key("10.0.0.1")
    clock.ms += 20_000
    limits.check_failed_auth("10.0.0.1")


def test_disabled_never_refuses() -> None:
    limits = RateLimits(settings(rate_limits_enabled=False), clock=FakeClock())
    for _ in range(50):
        limits.hit_key("key_a")
        limits.record_failed_auth("10.0.0.1")
    limits.check_failed_auth("10.0.0.1")


def test_memory_buckets_drop_the_full_ones() -> None:
    clock = FakeClock()
    limits = RateLimits(settings(), clock=clock)
    memory = limits._memory
    memory._max = 10
    for i in range(10):
        limits.hit_key(f"key_{i}")
    clock.ms += 60_000  # all refilled
    limits.hit_key("key_new")
    assert len(memory) == 1


# -- configuration -----------------------------------------------------------------


def test_storage_follows_the_settings() -> None:
    redis_broker = "redis://127.0.0.1:6379/0"
    assert RateLimits(settings(rate_limit_storage_url="", broker_url="")).backend == "memory"
    assert (
        RateLimits(settings(rate_limit_storage_url="", broker_url=redis_broker)).backend == "redis"
    )
    forced = settings(rate_limit_storage_url="memory://", broker_url=redis_broker)
    assert RateLimits(forced).backend == "memory"
    with pytest.raises(ValueError, match="GRAFT_RATE_LIMIT_STORAGE_URL"):
        RateLimits(settings(rate_limit_storage_url="memcached://x"))


def test_shared_instance_is_cached_and_rebuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFT_RATE_LIMIT_STORAGE_URL", "memory://")
    monkeypatch.setenv("GRAFT_RATE_LIMIT_PER_KEY", "60")
    get_settings.cache_clear()
    first = get_rate_limits()
    assert get_rate_limits() is first
    get_settings.cache_clear()
    assert get_rate_limits() is first  # same values, same instance
    monkeypatch.setenv("GRAFT_RATE_LIMIT_PER_KEY", "61")
    get_settings.cache_clear()
    second = get_rate_limits()
    assert second is not first
    assert "61 per minute" in second.per_key.message
    reset_rate_limits()
    assert get_rate_limits() is not second
    get_settings.cache_clear()


def test_unreachable_redis_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on port 1: connections are refused at once.
    limits = RateLimits(settings(rate_limit_storage_url="redis://127.0.0.1:1/0"))
    assert limits.backend == "redis"
    with caplog.at_level(logging.WARNING, logger="app.rate_limits"):
        for _ in range(20):
            limits.hit_key("key_a")  # the per-key limit is off
    warnings = [r for r in caplog.records if "Redis at 127.0.0.1:1/0 failed" in r.getMessage()]
    assert len(warnings) == 1  # once per retry interval, not once per request
    # Failed authentications are still counted, in this process.
    for _ in range(3):
        limits.check_failed_auth("10.0.0.1")
        limits.record_failed_auth("10.0.0.1")
    with pytest.raises(RateLimited):
        limits.check_failed_auth("10.0.0.1")


def test_unreachable_redis_fails_open_for_a_shared_round_trip(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Concurrent requests that shared one failed script call each fail open (the
    per-key limit) or fall back to this process (failed authentications), with one
    warning for the outage."""
    import asyncio

    limits = RateLimits(settings(rate_limit_storage_url="redis://127.0.0.1:1/0"))

    async def together() -> list[BaseException | None]:
        async def key() -> None:
            await limits.hit_key_async("key_a")

        async def auth() -> None:
            await limits.count_failed_auth_async("10.0.0.9")

        return await asyncio.gather(
            *[key() for _ in range(20)], *[auth() for _ in range(5)], return_exceptions=True
        )

    with caplog.at_level(logging.WARNING, logger="app.rate_limits"):
        answers = asyncio.run(together())
    assert answers[:20] == [None] * 20  # not enforced while Redis is away
    refused = [a for a in answers[20:] if isinstance(a, RateLimited)]
    assert len(refused) == 2  # 3 failures a minute, counted in this process
    warnings = [r for r in caplog.records if "Redis at 127.0.0.1:1/0 failed" in r.getMessage()]
    assert len(warnings) == 1


# -- Redis: one budget for every API process -------------------------------------------


@pytest.fixture
def redis_settings(redis_url: str) -> Iterator[tuple[Settings, str]]:
    import redis

    namespace = f"test-{uuid.uuid4().hex[:10]}"
    yield settings(rate_limit_storage_url=redis_url), namespace
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{KEY_PREFIX}{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.redis
def test_two_processes_share_one_budget(redis_settings: tuple[Settings, str]) -> None:
    conf, namespace = redis_settings
    clock = FakeClock()
    api_1 = RateLimits(conf, namespace=namespace, clock=clock)
    api_2 = RateLimits(conf, namespace=namespace, clock=clock)
    assert api_1.backend == "redis"
    for i in range(5):
        (api_1 if i % 2 else api_2).hit_key("key_a")
    for limits in (api_1, api_2):
        with pytest.raises(RateLimited) as caught:
            limits.hit_key("key_a")
        assert caught.value.retry_after == 1
        assert "60 per minute" in caught.value.message
    api_2.hit_key("key_b")  # keys stay independent
    # Another namespace is another budget.
    RateLimits(conf, namespace=f"{namespace}-other", clock=clock).hit_key("key_a")
    clock.ms += 1000
    api_1.hit_key("key_a")
    with pytest.raises(RateLimited):
        api_2.hit_key("key_a")
    api_1.close()
    api_2.close()


@pytest.mark.redis
def test_failed_auth_is_shared_and_keys_expire(
    redis_settings: tuple[Settings, str], redis_url: str
) -> None:
    import redis

    conf, namespace = redis_settings
    api_1 = RateLimits(conf, namespace=namespace)
    api_2 = RateLimits(conf, namespace=namespace)
    api_1.record_failed_auth("10.0.0.1")
    api_2.record_failed_auth("10.0.0.1")
    api_1.check_failed_auth("10.0.0.1")
    api_2.record_failed_auth("10.0.0.1")
    with pytest.raises(RateLimited) as caught:
        api_1.check_failed_auth("10.0.0.1")
    assert 1 <= caught.value.retry_after <= 20
    api_2.check_failed_auth("10.0.0.2")
    client = redis.Redis.from_url(redis_url)
    key = f"{KEY_PREFIX}{namespace}:auth:10.0.0.1"
    assert client.exists(key)
    assert 0 < int(client.pttl(key)) <= 2 * 60_000  # idle buckets clean themselves up
    client.close()


def _script_calls(client: Any) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


@pytest.mark.redis
def test_concurrent_requests_share_round_trips_and_spend_exactly(
    redis_settings: tuple[Settings, str], redis_url: str
) -> None:
    """On the event loop, requests of one key that arrive together are decided by one
    script call (weight n); the answers are those of n calls in arrival order."""
    import asyncio

    import redis

    conf, namespace = redis_settings
    clock = FakeClock()
    client = redis.Redis.from_url(redis_url)

    async def burst(limits: RateLimits, key: str, n: int) -> list[int | None]:
        async def one() -> int | None:
            try:
                await limits.hit_key_async(key)
                return None
            except RateLimited as refused:
                return refused.retry_after

        return await asyncio.gather(*[one() for _ in range(n)])

    roomy = RateLimits(
        settings(rate_limit_storage_url=redis_url, rate_limit_burst=1000),
        namespace=namespace,
        clock=clock,
    )
    before = _script_calls(client)
    assert asyncio.run(burst(roomy, "key_a", 200)) == [None] * 200
    calls = _script_calls(client) - before
    assert 1 <= calls <= 20  # not one per request
    # 800 tokens are left of key_a's 1000: exactly those are spent, in arrival order.
    answers = asyncio.run(burst(roomy, "key_a", 850))
    assert answers[:800] == [None] * 800
    assert answers[800:] == [1] * 50
    # The same budget seen by the thread path: nothing is left, nothing was lost.
    with pytest.raises(RateLimited):
        roomy.hit_key("key_a")
    roomy.close()

    # A second process on the same budget: the two never admit more than the burst.
    tight = [RateLimits(conf, namespace=namespace, clock=clock) for _ in range(2)]

    async def both() -> list[int | None]:
        first, second = await asyncio.gather(*[burst(t, "key_b", 6) for t in tight])
        return [*first, *second]

    answers = asyncio.run(both())
    assert answers.count(None) == 5  # the burst of 5, across both processes
    assert all(a == 1 for a in answers if a is not None)
    for limits in tight:
        limits.close()
    client.close()
