"""Admin routes: tenants, their limits and their API keys."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import select

from podium.quotas import effective_limits
from podium.roster import DEFAULT_AGENT, DEFAULT_ROSTER
from podium.runtime import Runtime
from podium.store import Agent, ApiKey, Tenant, utcnow
from podium_gateway.auth import AdminDep, RuntimeDep, generate_key, hash_key, key_cache
from podium_gateway.errors import API_ERRORS, error_responses, not_found
from podium_gateway.schemas import (
    ApiKeyCreate,
    ApiKeyInfo,
    ApiKeyOut,
    KeyId,
    TenantCreate,
    TenantId,
    TenantLimits,
    TenantOut,
    TenantPatch,
)

router = APIRouter(
    prefix="/v1/tenants", tags=["admin"], responses={**API_ERRORS, **error_responses(403)}
)


def _out(runtime: Runtime, tenant: Tenant) -> TenantOut:
    limits = effective_limits(runtime.settings, tenant.limits)
    return TenantOut(
        id=tenant.id,
        name=tenant.name,
        default_agent=tenant.default_agent,
        created_at=tenant.created_at,
        limits=TenantLimits.model_validate(limits.as_dict()),
        limit_overrides=dict(tenant.limits or {}),
    )


@router.post("", status_code=201, response_model=TenantOut)
def create_tenant(body: TenantCreate, _admin: AdminDep, runtime: RuntimeDep) -> TenantOut:
    """Create a tenant with the default agent roster and the default limits."""
    with runtime.db.session() as session:
        tenant = Tenant(name=body.name, default_agent=DEFAULT_AGENT, limits={})
        session.add(tenant)
        session.flush()
        for spec in DEFAULT_ROSTER:
            session.add(Agent(tenant_id=tenant.id, **spec))
        return _out(runtime, tenant)


@router.get("/{tenant_id}", response_model=TenantOut)
def get_tenant(tenant_id: TenantId, _admin: AdminDep, runtime: RuntimeDep) -> TenantOut:
    """A tenant and the limits in force for it."""
    with runtime.db.session() as session:
        tenant = session.get(Tenant, tenant_id)
        if tenant is None:
            raise not_found("tenant", tenant_id)
        return _out(runtime, tenant)


@router.patch("/{tenant_id}", response_model=TenantOut)
def patch_tenant(
    tenant_id: TenantId,
    body: TenantPatch,
    _admin: AdminDep,
    runtime: RuntimeDep,
    request: Request,
) -> TenantOut:
    """Rename a tenant or set its limits. Limits take effect on the tenant's next request
    (through another gateway: within a second); runs already admitted keep their
    reservations."""
    with runtime.db.session() as session:
        tenant = session.get(Tenant, tenant_id, with_for_update=True)
        if tenant is None:
            raise not_found("tenant", tenant_id)
        if body.name is not None:
            tenant.name = body.name
        if body.limits is not None:
            overrides = dict(tenant.limits or {})
            for name, value in body.limits.model_dump(exclude_unset=True).items():
                if value is None:
                    overrides.pop(name, None)  # back to the deployment default
                else:
                    overrides[name] = value
            tenant.limits = overrides
        session.flush()
        out = _out(runtime, tenant)
    key_cache(request).forget(tenant_id=tenant_id)
    return out


@router.post("/{tenant_id}/api-keys", status_code=201, response_model=ApiKeyOut)
def create_api_key(
    tenant_id: TenantId, _admin: AdminDep, runtime: RuntimeDep, body: ApiKeyCreate | None = None
) -> ApiKeyOut:
    """Issue an API key for a tenant. The key appears only in this response."""
    key = generate_key()
    with runtime.db.session() as session:
        if session.get(Tenant, tenant_id) is None:
            raise not_found("tenant", tenant_id)
        row = ApiKey(
            tenant_id=tenant_id,
            key_hash=hash_key(key),
            prefix=key[:12],
            name=body.name if body else None,
        )
        session.add(row)
        session.flush()
        return ApiKeyOut(
            id=row.id,
            tenant_id=tenant_id,
            key=key,
            prefix=row.prefix,
            name=row.name,
            created_at=row.created_at,
        )


@router.get("/{tenant_id}/api-keys", response_model=list[ApiKeyInfo])
def list_api_keys(tenant_id: TenantId, _admin: AdminDep, runtime: RuntimeDep) -> list[ApiKeyInfo]:
    """A tenant's keys: prefixes and dates only (the keys themselves are not stored)."""
    with runtime.db.session() as session:
        if session.get(Tenant, tenant_id) is None:
            raise not_found("tenant", tenant_id)
        rows = session.scalars(
            select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
        ).all()
        return [ApiKeyInfo.model_validate(r, from_attributes=True) for r in rows]


@router.delete("/{tenant_id}/api-keys/{key_id}", status_code=204)
def revoke_api_key(
    tenant_id: TenantId, key_id: KeyId, _admin: AdminDep, runtime: RuntimeDep, request: Request
) -> Response:
    """Revoke a key: every later request with it answers 401. Revoking twice is harmless."""
    with runtime.db.session() as session:
        row = session.scalars(
            select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id)
        ).one_or_none()
        if row is None:
            raise not_found("api key", key_id)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
    # At once here; other gateways drop the key within auth.KEY_CACHE_S.
    key_cache(request).forget(key_id=key_id)
    return Response(status_code=204)
