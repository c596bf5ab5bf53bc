"""API keys: issued once, stored as SHA-256, presented as ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
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


def get_runtime(request: Request) -> Runtime:
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


def require_tenant(request: Request, runtime: RuntimeDep) -> Principal:
    token = _bearer(request)
    with runtime.db.session() as session:
        row = session.execute(
            select(ApiKey.id, ApiKey.tenant_id, Tenant.limits)
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.key_hash == hash_key(token), ApiKey.revoked_at.is_(None))
        ).first()
    if row is None:
        raise ApiError(
            401,
            "unauthorized",
            "invalid or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Principal(tenant_id=row.tenant_id, key_id=row.id, limits=dict(row.limits or {}))


def require_admin(request: Request, runtime: RuntimeDep) -> None:
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
