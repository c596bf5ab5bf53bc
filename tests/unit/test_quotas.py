"""podium.quotas: the same rules on both backends (Redis Lua scripts and in-memory)."""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator

import pytest
import redis

from podium.quotas import Limits, MemoryQuotas, Quotas, RedisQuotas, effective_limits
from podium.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(params=["memory", "redis"])
def quotas(request: pytest.FixtureRequest) -> Iterator[Quotas]:
    settings = Settings(quota_min_run_tokens=100, quota_min_run_cost_usd=0.01)
    if request.param == "memory":
        yield MemoryQuotas(settings)
        return
    if not _redis_up():
        pytest.skip("Redis is not reachable")
    prefix = f"test-quota-{uuid.uuid4().hex}:"
    backend = RedisQuotas(REDIS_URL, prefix, settings)
    try:
        yield backend
    finally:
        backend.close()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def limits(**kw: float) -> Limits:
    base = {
        "requests_per_minute": 0,
        "concurrent_runs": 0,
        "concurrent_calls": 0,
        "tokens_per_day": 0,
        "cost_per_month_usd": 0.0,
    }
    base.update(kw)
    return Limits(**base)  # type: ignore[arg-type]


def test_rate_limit_admits_exactly_n_and_says_when_to_retry(quotas: Quotas) -> None:
    lim = limits(requests_per_minute=5)
    results = [quotas.admit("t", f"r{i}", lim, 10, 0.0) for i in range(8)]
    assert [r.admitted for r in results] == [True] * 5 + [False] * 3
    refused = results[-1]
    assert refused.refusal == "rate_limited"
    assert 0 < refused.retry_after_s <= 60
    assert quotas.usage("t").requests_last_minute == 5
    # Another tenant has its own window.
    assert quotas.admit("other", "x", lim, 10, 0.0).admitted


def test_reservations_cap_concurrent_runs_and_settle_frees_them(quotas: Quotas) -> None:
    lim = limits(concurrent_runs=2)
    assert quotas.admit("t", "a", lim, 10, 0.0).admitted
    assert quotas.admit("t", "b", lim, 10, 0.0).admitted
    third = quotas.admit("t", "c", lim, 10, 0.0)
    assert not third.admitted and third.refusal == "concurrent_runs_exceeded"
    assert quotas.settle("t", "a", 7, 0.0)
    assert not quotas.settle("t", "a", 7, 0.0)  # idempotent: charged once
    assert quotas.admit("t", "c", lim, 10, 0.0).admitted
    assert quotas.usage("t").tokens_used_today == 7


def test_admitting_the_same_run_twice_reserves_once(quotas: Quotas) -> None:
    lim = limits(tokens_per_day=1000)
    first = quotas.admit("t", "a", lim, 600, 0.0)
    again = quotas.admit("t", "a", lim, 600, 0.0)
    assert first.admitted and again.admitted and again.tokens == first.tokens == 600
    assert quotas.usage("t").tokens_reserved == 600


def test_token_budget_reserves_caps_and_grants_what_is_left(quotas: Quotas) -> None:
    lim = limits(tokens_per_day=1000)
    assert quotas.admit("t", "a", lim, 400, 0.0).tokens == 400
    assert quotas.admit("t", "b", lim, 400, 0.0).tokens == 400
    partial = quotas.admit("t", "c", lim, 400, 0.0)
    assert partial.admitted and partial.tokens == 200  # what is left, above the minimum
    refused = quotas.admit("t", "d", lim, 400, 0.0)
    assert not refused.admitted and refused.refusal == "token_budget_exhausted"
    assert refused.retry_after_s > 0  # the start of the next UTC day
    # Settling with real usage frees the unused part of the reservation.
    quotas.settle("t", "a", 150, 0.0)
    usage = quotas.usage("t")
    assert (usage.tokens_used_today, usage.tokens_reserved) == (150, 600)
    assert quotas.admit("t", "d", lim, 400, 0.0).tokens == 250


def test_cost_budget_in_micro_dollars(quotas: Quotas) -> None:
    lim = limits(cost_per_month_usd=1.0)
    assert quotas.admit("t", "a", lim, 10, 0.7).cost_usd == pytest.approx(0.7)
    assert quotas.admit("t", "b", lim, 10, 0.7).cost_usd == pytest.approx(0.3)
    refused = quotas.admit("t", "c", lim, 10, 0.7)
    assert refused.refusal == "cost_budget_exhausted"
    quotas.settle("t", "a", 0, 0.123456)
    usage = quotas.usage("t")
    assert usage.cost_used_this_month_usd == pytest.approx(0.123456)
    assert usage.cost_reserved_usd == pytest.approx(0.3)


def test_extend_grows_a_reservation_within_the_budget(quotas: Quotas) -> None:
    lim = limits(tokens_per_day=1000)
    quotas.admit("t", "a", lim, 300, 0.0)
    grown = quotas.extend("t", "a", lim, 300, 0.0)
    assert grown.admitted and grown.tokens == 600
    refused = quotas.extend("t", "a", lim, 600, 0.0)
    assert not refused.admitted and refused.refusal == "token_budget_exhausted"
    assert not quotas.extend("t", "unknown", lim, 1, 0.0).admitted
    assert [r.run_id for r in quotas.reservations()] == ["a"]


def test_a_burst_from_many_threads_never_overshoots(quotas: Quotas) -> None:
    lim = limits(tokens_per_day=10_000, concurrent_runs=30)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: quotas.admit("t", f"r{i}", lim, 700, 0.0), range(60)))
    granted = sum(r.tokens for r in results if r.admitted)
    assert granted <= 10_000
    assert sum(r.admitted for r in results) == 15  # 14 x 700 + one of 200
    assert quotas.usage("t").tokens_reserved == granted


def test_effective_limits_layer_overrides_on_defaults() -> None:
    settings = Settings(tenant_requests_per_minute=100, tenant_tokens_per_day=5000)
    lim = effective_limits(settings, {"tokens_per_day": 0, "concurrent_runs": 3})
    assert lim.requests_per_minute == 100
    assert lim.tokens_per_day == 0  # 0 = unlimited, an explicit override
    assert lim.concurrent_runs == 3
    assert effective_limits(settings, None).tokens_per_day == 5000
