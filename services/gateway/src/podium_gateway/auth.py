"""API keys: issued once, stored as SHA-256, presented as ``Authorization: Bearer <key>``."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from podium.runtime import Runtime
from podium.store import ApiKey, Tenant
from podium_gateway.errors import ApiError

KEY_PREFIX = "pdm_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str
    # The tenant's limit overrides, read with the key (one query per request).
    limits: dict[str, Any] = field(default_factory=dict, compare=False)


# The dependencies that never wait are ``async``: FastAPI runs a sync dependency on its thread
# pool, and each such hop costs more CPU than the dependency itself.
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "unauthorized",
            "missing or malformed Authorization header; expected 'Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token.strip()


# How long a gateway trusts a key it has checked: a revocation, or a change of the tenant's
# limits, made through another gateway takes effect within this (through this one: at once).
KEY_CACHE_S = 0.5
KEY_CACHE_SIZE = 10_000


class KeyCache:
    """Keys this gateway checked recently, by hash: a request within ``ttl_s`` of the last
    check of its key costs no query. Invalid keys are never cached."""

    def __init__(self, ttl_s: float = KEY_CACHE_S, size: int = KEY_CACHE_SIZE) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()
        # Reads of the store in flight, by key hash (touched on the event loop only).
        self._reading: dict[str, asyncio.Future[Principal]] = {}

    async def principal(self, key_hash: str, read: Callable[[], Awaitable[Principal]]) -> Principal:
        """The cached principal of ``key_hash``, else ``read()``'s. When an entry expires
        under load, the requests that find it expired wait for the one read already in
        flight instead of each reading the store; if that read fails, each reads for itself
        (a refused key is never shared or cached)."""
        cached = self.get(key_hash)
        if cached is not None:
            return cached
        reading = self._reading.get(key_hash)
        if reading is not None:
            await asyncio.wait((reading,))
            if not reading.cancelled():
                return reading.result()
        else:
            reading = self._reading[key_hash] = asyncio.get_running_loop().create_future()
            try:
                principal = await read()
            except BaseException:
                reading.cancel()
                raise
            finally:
                self._reading.pop(key_hash, None)
            reading.set_result(principal)
            self.put(key_hash, principal)
            return principal
        principal = await read()  # the shared read failed: read for this request
        self.put(key_hash, principal)
        return principal

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or time.monotonic() - entry[0] >= self.ttl_s:
            return None
        return entry[1]

    def put(self, key_hash: str, principal: Principal) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= self.size:
                self._entries = {k: v for k, v in self._entries.items() if now - v[0] < self.ttl_s}
                if len(self._entries) >= self.size:
                    self._entries.clear()
            self._entries[key_hash] = (now, principal)

    def forget(self, *, tenant_id: str | None = None, key_id: str | None = None) -> None:
        """Drop the entries of a tenant or of a key (its limits or the key just changed)."""
        with self._lock:
            self._entries = {
                k: v
                for k, v in self._entries.items()
                if v[1].tenant_id != tenant_id and v[1].key_id != key_id
            }


def key_cache(request: Request) -> KeyCache:
    cache: KeyCache | None = getattr(request.app.state, "key_cache", None)
    if cache is None:
        cache = request.app.state.key_cache = KeyCache()
    return cache


async def require_tenant(request: Request, runtime: RuntimeDep) -> Principal:
    """The caller's tenant: from this gateway's key cache, else (a database read) on the
    thread pool."""
    key_hash = hash_key(_bearer(request))
    return await key_cache(request).principal(
        key_hash, lambda: run_in_threadpool(_principal_of, runtime, key_hash)
    )


def _principal_of(runtime: Runtime, key_hash: str) -> Principal:
    with runtime.db.read() as session:
        row = session.execute(
            select(ApiKey.id, ApiKey.tenant_id, Tenant.limits)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        ).first()
    if row is None:
        raise ApiError(
            401,
            "unauthorized",
            "invalid or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Principal(tenant_id=row.tenant_id, key_id=row.id, limits=dict(row.limits or {}))


async def require_admin(request: Request, runtime: RuntimeDep) -> None:
    token = _bearer(request)
    admin_key = runtime.settings.admin_key
    if admin_key is None:
        raise ApiError(
            403,
            "admin_disabled",
            "admin routes are disabled: set PODIUM_ADMIN_KEY on the gateway to enable them",
        )
    if not hmac.compare_digest(token.encode(), admin_key.encode()):
        raise ApiError(403, "forbidden", "this route needs the admin key")


TenantDep = Annotated[Principal, Depends(require_tenant)]
AdminDep = Annotated[None, Depends(require_admin)]
