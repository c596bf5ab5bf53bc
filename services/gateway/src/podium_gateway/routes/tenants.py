"""Admin routes: tenants and their API keys."""

from __future__ import annotations

from fastapi import APIRouter

from podium.roster import DEFAULT_AGENT, DEFAULT_ROSTER
from podium.store import Agent, ApiKey, Tenant
from podium_gateway.auth import AdminDep, RuntimeDep, generate_key, hash_key
from podium_gateway.errors import API_ERRORS, error_responses, not_found
from podium_gateway.schemas import ApiKeyCreate, ApiKeyOut, TenantCreate, TenantOut

router = APIRouter(
    prefix="/v1/tenants", tags=["admin"], responses={**API_ERRORS, **error_responses(403)}
)


@router.post("", status_code=201, response_model=TenantOut)
def create_tenant(body: TenantCreate, _admin: AdminDep, runtime: RuntimeDep) -> TenantOut:
    """Create a tenant with the default agent roster."""
    with runtime.db.session() as session:
        tenant = Tenant(name=body.name, default_agent=DEFAULT_AGENT)
        session.add(tenant)
        session.flush()
        for spec in DEFAULT_ROSTER:
            session.add(Agent(tenant_id=tenant.id, **spec))
        return TenantOut.model_validate(tenant, from_attributes=True)


@router.post("/{tenant_id}/api-keys", status_code=201, response_model=ApiKeyOut)
def create_api_key(
    tenant_id: str, _admin: AdminDep, runtime: RuntimeDep, body: ApiKeyCreate | None = None
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
