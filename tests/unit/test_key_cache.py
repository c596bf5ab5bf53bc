"""The gateway's API-key cache: when a key's entry expires under load, the requests that find
it expired share one read of the store; a refused key is read by each request, never
shared or cached."""

from __future__ import annotations

import asyncio

import pytest

from podium_gateway.auth import KeyCache, Principal
from podium_gateway.errors import ApiError


class Store:
    """Counts reads; each waits on the loop, as a read on the thread pool does."""

    def __init__(self, principal: Principal | None) -> None:
        self.principal, self.reads = principal, 0

    async def read(self) -> Principal:
        self.reads += 1
        await asyncio.sleep(0.01)
        if self.principal is None:
            raise ApiError(401, "unauthorized", "invalid or revoked API key")
        return self.principal


def test_concurrent_requests_on_an_expired_key_read_the_store_once() -> None:
    cache, store = KeyCache(ttl_s=60), Store(Principal(tenant_id="t", key_id="k", limits={}))

    async def burst() -> list[Principal]:
        return await asyncio.gather(*(cache.principal("h", store.read) for _ in range(20)))

    found = asyncio.run(burst())
    assert store.reads == 1 and {p.tenant_id for p in found} == {"t"}
    asyncio.run(burst())  # cached now: no read at all
    assert store.reads == 1


def test_a_refused_key_is_read_by_each_request_and_never_cached() -> None:
    cache, store = KeyCache(ttl_s=60), Store(None)

    async def burst() -> list[Principal | BaseException]:
        return await asyncio.gather(
            *(cache.principal("h", store.read) for _ in range(5)), return_exceptions=True
        )

    results = asyncio.run(burst())
    assert all(isinstance(r, ApiError) and r.status == 401 for r in results)
    assert store.reads == 5
    with pytest.raises(ApiError):
        asyncio.run(cache.principal("h", store.read))
    assert store.reads == 6
