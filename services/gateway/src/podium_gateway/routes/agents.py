"""The tenant's agent definitions: list, read, create or replace, delete (docs/architecture.md,
"HTTP API").

Writes to one tenant's agents are serialised on the tenant's row, so a sub-agent check and a
concurrent delete of that sub-agent cannot interleave, and two concurrent creations of one
name become a create and a replace.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from podium.llm import missing_settings, not_set_message
from podium.runtime import Runtime
from podium.settings import Settings
from podium.store import Agent, Tenant, tenant_session, utcnow
from podium.tools_catalog import KNOWN_TOOL_NAMES
from podium_gateway.agent_schemas import (
    AGENT_NAME_PATTERN,
    AgentIn,
    AgentList,
    AgentOut,
    AgentWarning,
)
from podium_gateway.auth import Principal, RuntimeDep, TenantDep
from podium_gateway.errors import API_ERRORS, ApiError, ErrorBody, not_found

router = APIRouter(prefix="/v1/agents", tags=["agents"], responses=API_ERRORS)

AgentName = Annotated[
    str,
    Path(
        pattern=AGENT_NAME_PATTERN,
        description="1 to 100 characters: letters, digits, '_', '.', '-'; starts with a "
        "letter or digit.",
    ),
]


def _warnings(settings: Settings, agent: Agent) -> list[AgentWarning]:
    provider = agent.provider or settings.llm_provider
    missing = missing_settings(settings, provider)
    if not missing:
        return []
    return [
        AgentWarning(
            code="provider_not_configured",
            message=f"agent {agent.name!r} uses provider {provider!r}, but "
            f"{not_set_message(missing)} in this deployment; its calls will fail",
            provider=provider,
            missing_settings=missing,
        )
    ]


def _out(settings: Settings, agent: Agent) -> AgentOut:
    out = AgentOut.model_validate(agent, from_attributes=True)
    out.warnings = _warnings(settings, agent)
    return out


def _lock_tenant(session: Session, tenant_id: str) -> Tenant:
    # FOR NO KEY UPDATE: serialises agent writes of this tenant without blocking the inserts
    # of other tenant-owned rows (their foreign-key checks take FOR KEY SHARE).
    tenant = session.scalars(
        select(Tenant).where(Tenant.id == tenant_id).with_for_update(key_share=True)
    ).one_or_none()
    if tenant is None:  # the key outlived its tenant
        raise ApiError(401, "unauthorized", "this API key's tenant no longer exists")
    return tenant


def _find(session: Session, name: str) -> Agent | None:
    return session.scalars(select(Agent).where(Agent.name == name)).one_or_none()


@router.get("", response_model=AgentList)
def list_agents(principal: TenantDep, runtime: RuntimeDep) -> AgentList:
    """The tenant's agents, sorted by name."""
    with tenant_session(runtime.db, principal.tenant_id) as session:
        rows = session.scalars(select(Agent).order_by(Agent.name)).all()
        return AgentList(data=[_out(runtime.settings, a) for a in rows])


@router.get("/{name}", response_model=AgentOut)
def get_agent(name: AgentName, principal: TenantDep, runtime: RuntimeDep) -> AgentOut:
    with tenant_session(runtime.db, principal.tenant_id) as session:
        agent = _find(session, name)
        if agent is None:
            raise not_found("agent", name)
        return _out(runtime.settings, agent)


def _check_references(name: str, body: AgentIn) -> None:
    unknown_tools = [t for t in body.tools if t not in KNOWN_TOOL_NAMES]
    if unknown_tools:
        raise ApiError(
            422,
            "unknown_tool",
            f"unknown tools {unknown_tools}; available tools: {sorted(KNOWN_TOOL_NAMES)}",
            names=unknown_tools,
            available=sorted(KNOWN_TOOL_NAMES),
        )
    if name in body.sub_agents:
        raise ApiError(
            422,
            "invalid_sub_agents",
            f"agent {name!r} cannot list itself in sub_agents",
            names=[name],
        )


def _put(runtime: Runtime, principal: Principal, name: str, body: AgentIn) -> tuple[AgentOut, bool]:
    with tenant_session(runtime.db, principal.tenant_id) as session:
        _lock_tenant(session, principal.tenant_id)
        if body.sub_agents:
            known = set(session.scalars(select(Agent.name).where(Agent.name.in_(body.sub_agents))))
            missing = [n for n in body.sub_agents if n not in known]
            if missing:
                raise ApiError(
                    422,
                    "unknown_agent",
                    f"sub_agents names agents that are not defined: {missing}; create them first",
                    names=missing,
                )
        agent = _find(session, name)
        created = agent is None
        if agent is None:
            agent = Agent(name=name)
            session.add(agent)
        for field, value in body.model_dump().items():
            setattr(agent, field, value)
        if not created:
            agent.updated_at = utcnow()  # a replace counts as an update even if nothing changed
        session.flush()
        return _out(runtime.settings, agent), created


@router.put(
    "/{name}",
    response_model=AgentOut,
    responses={
        201: {"model": AgentOut, "description": "The agent was created."},
        422: {"model": ErrorBody, "description": "Invalid body, unknown tool or sub-agent."},
    },
)
def put_agent(
    name: AgentName,
    body: AgentIn,
    response: Response,
    principal: TenantDep,
    runtime: RuntimeDep,
) -> AgentOut:
    """Create (201) or replace (200) the agent ``name``. The body is the whole definition:
    omitted fields take their defaults.

    A definition this deployment cannot serve as it stands (e.g. its provider has no API key
    here) is stored all the same, with ``warnings`` saying why its calls would fail."""
    _check_references(name, body)
    try:
        out, created = _put(runtime, principal, name, body)
    except IntegrityError:
        # A concurrent creation of the same name won (possible where row locks are not
        # available, e.g. SQLite): this request becomes a replace.
        out, created = _put(runtime, principal, name, body)
    response.status_code = 201 if created else 200
    return out


@router.delete(
    "/{name}",
    status_code=204,
    response_class=Response,
    responses={409: {"model": ErrorBody, "description": "It is the tenant's default agent."}},
)
def delete_agent(name: AgentName, principal: TenantDep, runtime: RuntimeDep) -> Response:
    """Delete the agent ``name``; it is also removed from other agents' ``sub_agents``. The
    tenant's default agent cannot be deleted."""
    with tenant_session(runtime.db, principal.tenant_id) as session:
        tenant = _lock_tenant(session, principal.tenant_id)
        agent = _find(session, name)
        if agent is None:
            raise not_found("agent", name)
        if name == tenant.default_agent:
            raise ApiError(
                409,
                "default_agent",
                f"agent {name!r} is the tenant's default agent and cannot be deleted; "
                "it can be replaced with PUT",
            )
        for other in session.scalars(select(Agent).where(Agent.id != agent.id)):
            if name in (other.sub_agents or []):
                other.sub_agents = [n for n in other.sub_agents if n != name]
        session.delete(agent)
    return Response(status_code=204)
