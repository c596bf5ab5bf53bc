"""Reading the tenant's agent definitions."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from podium.store import Agent, tenant_session
from podium_gateway.auth import RuntimeDep, TenantDep
from podium_gateway.errors import not_found
from podium_gateway.schemas import AgentList, AgentOut

router = APIRouter(prefix="/v1/agents", tags=["agents"])


@router.get("", response_model=AgentList)
def list_agents(principal: TenantDep, runtime: RuntimeDep) -> AgentList:
    with tenant_session(runtime.db, principal.tenant_id) as session:
        rows = session.scalars(select(Agent).order_by(Agent.name)).all()
        return AgentList(data=[AgentOut.model_validate(a, from_attributes=True) for a in rows])


@router.get("/{name}", response_model=AgentOut)
def get_agent(name: str, principal: TenantDep, runtime: RuntimeDep) -> AgentOut:
    with tenant_session(runtime.db, principal.tenant_id) as session:
        agent = session.scalars(select(Agent).where(Agent.name == name)).one_or_none()
        if agent is None:
            raise not_found("agent", name)
        return AgentOut.model_validate(agent, from_attributes=True)
