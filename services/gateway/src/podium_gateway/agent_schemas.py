"""Request and response bodies of the agents and patterns routes (docs/architecture.md, "HTTP API").

Field names follow Coday's agent definitions in snake_case (``podium agents import`` maps
Coday's camelCase YAML onto them)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, field_validator

from podium.queues import agents_queue
from podium_gateway.schemas import Strict

AGENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"

AgentName = Annotated[str, StringConstraints(pattern=AGENT_NAME_PATTERN)]
ProviderName = Literal["simulated", "openai", "anthropic"]


class AgentIn(Strict):
    """The whole definition of an agent: ``PUT`` replaces every field (omitted ones take
    their defaults)."""

    description: str = Field(default="", max_length=10_000)
    instructions: str = Field(default="", max_length=100_000)
    provider: ProviderName | None = Field(
        default=None, description="The LLM provider; null uses the deployment's default."
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The provider's model name; null uses the deployment's default.",
    )
    temperature: float = Field(default=0.0, ge=0, le=2, allow_inf_nan=False)
    max_output_tokens: int = Field(default=1024, ge=1, le=200_000)
    tools: list[Annotated[str, StringConstraints(max_length=100)]] = Field(
        default_factory=list,
        max_length=50,
        description="Tool allow-list; each name must be one of the tools Podium provides.",
    )
    sub_agents: list[AgentName] = Field(
        default_factory=list,
        max_length=50,
        description="Agents this one may delegate to; each must be an existing agent.",
    )
    pool: str = Field(
        default="default",
        min_length=1,
        max_length=50,
        description="The agent-worker pool whose queue runs this agent's calls.",
    )

    @field_validator("tools", "sub_agents")
    @classmethod
    def _dedupe(cls, names: list[str]) -> list[str]:
        return list(dict.fromkeys(names))

    @field_validator("pool")
    @classmethod
    def _pool_name(cls, pool: str) -> str:
        agents_queue(pool)  # raises ValueError with a clear message
        return pool


class AgentWarning(BaseModel):
    """Something about a definition this deployment cannot honour; the definition is stored
    all the same (the missing piece may be configured on the agent workers only)."""

    code: Literal["provider_not_configured"] = Field(
        description="provider_not_configured: the agent's provider (its own, or the "
        "deployment's default) has no credentials in this deployment; its calls will fail."
    )
    message: str
    provider: str
    missing_settings: list[str] = Field(
        description="The environment variables to set, e.g. PODIUM_ANTHROPIC_API_KEY."
    )


class AgentOut(BaseModel):
    name: str
    description: str
    instructions: str
    provider: str | None
    model: str | None
    temperature: float
    max_output_tokens: int
    tools: list[Any]
    sub_agents: list[Any]
    pool: str
    created_at: datetime
    updated_at: datetime
    warnings: list[AgentWarning] = Field(
        default_factory=list,
        description="Problems of this deployment with the definition, checked at each read.",
    )


class AgentList(BaseModel):
    data: list[AgentOut]


class PatternOut(BaseModel):
    name: str
    description: str
    options: dict[str, Any]


class PatternList(BaseModel):
    data: list[PatternOut]
