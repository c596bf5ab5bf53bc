"""Request and response bodies of the v1 HTTP API (docs/architecture.md, "HTTP API")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# Ids are 32 hex characters; anything that cannot be an id (too long, a NUL, a slash) is 422,
# a well-formed id of nothing (or of another tenant's resource) is 404.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def _id(kind: str) -> Any:
    return Path(pattern=ID_PATTERN, description=f"The {kind}'s id.", examples=["0" * 32])


RunId = Annotated[str, _id("run")]
ThreadId = Annotated[str, _id("thread")]
TenantId = Annotated[str, _id("tenant")]
KeyId = Annotated[str, _id("API key")]
# Thread event seqs are 32-bit integers in the store.
MAX_SEQ = 2**31 - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # The store (PostgreSQL text) cannot hold a NUL character: refused here, as bad input.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL (\\u0000) characters")
        return value


class TenantCreate(Strict):
    name: str = Field(min_length=1, max_length=200)


class TenantLimitsIn(Strict):
    """Per-tenant overrides. Omit a field to leave it; null returns it to the deployment
    default; 0 means unlimited."""

    requests_per_minute: int | None = Field(default=None, ge=0, le=10_000_000)
    concurrent_runs: int | None = Field(default=None, ge=0, le=10_000_000)
    concurrent_calls: int | None = Field(default=None, ge=0, le=10_000_000)
    tokens_per_day: int | None = Field(default=None, ge=0, le=10**14)
    cost_per_month_usd: float | None = Field(default=None, ge=0, le=10**8)


class TenantPatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    limits: TenantLimitsIn | None = None


class TenantLimits(BaseModel):
    requests_per_minute: int
    concurrent_runs: int
    concurrent_calls: int
    tokens_per_day: int
    cost_per_month_usd: float


class TenantOut(BaseModel):
    id: str
    name: str
    default_agent: str
    created_at: datetime
    limits: TenantLimits | None = Field(
        default=None, description="The limits in force: the tenant's overrides on the defaults."
    )
    limit_overrides: dict[str, Any] = Field(default_factory=dict)


class ApiKeyInfo(BaseModel):
    id: str
    prefix: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


class UsageMeter(BaseModel):
    used: float
    reserved: float = Field(0, description="Held by unfinished runs (their caps).")
    limit: float = Field(description="0 means unlimited.")
    remaining: float | None = Field(description="null when unlimited.")
    resets_in_s: float | None = None


class TenantUsage(BaseModel):
    tenant_id: str
    requests_per_minute: UsageMeter
    concurrent_runs: UsageMeter
    concurrent_calls: UsageMeter
    tokens_per_day: UsageMeter
    cost_per_month_usd: UsageMeter
    queued_calls: int = Field(description="Agent calls waiting for a fair-dispatch slot.")


class ApiKeyCreate(Strict):
    name: str | None = Field(default=None, max_length=200)


class ApiKeyOut(BaseModel):
    id: str
    tenant_id: str
    key: str = Field(description="The API key. It is shown only in this response.")
    prefix: str
    name: str | None
    created_at: datetime


class ThreadCreate(Strict):
    title: str | None = Field(default=None, max_length=500)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ThreadOut(BaseModel):
    id: str
    title: str | None
    metadata: dict[str, Any]
    last_agent: str | None
    active_run_id: str | None
    message_count: int
    created_at: datetime


class MessageOut(BaseModel):
    id: str
    seq: int
    kind: str
    role: str
    agent: str | None
    content: str
    run_id: str | None
    created_at: datetime


class MessagePage(BaseModel):
    data: list[MessageOut]
    has_more: bool
    next_after: int | None = Field(description="Pass as ?after= to read the next page.")


class RunCreate(Strict):
    input: str = Field(min_length=1, max_length=100_000)
    agent: str | None = Field(default=None, pattern=NAME_PATTERN)
    pattern: str | None = Field(default=None, max_length=50)
    max_tokens: int | None = Field(
        default=None, ge=1, description="Token cap for this run (at most the deployment's cap)."
    )
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        description="Cost cap in USD for this run (at most the deployment's cap).",
    )
    max_iterations: int | None = Field(
        default=None, ge=1, description="Agent-call cap for this run (at most the deployment's)."
    )
    deadline_s: float | None = Field(
        default=None, gt=0, description="Wall-clock deadline in seconds (at most the deployment's)."
    )
    multitask: Literal["reject", "enqueue", "interrupt"] = Field(
        default="enqueue",
        description=(
            "What to do if the thread already has an unfinished run: reject (409), enqueue "
            "(start after it), or interrupt (cancel it, then start)."
        ),
    )


class RunAccepted(BaseModel):
    id: str
    status: str
    thread_id: str


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    orchestrator_tokens: int = 0
    cost_usd: float = 0.0
    agent_calls: int = 0


class RunOut(BaseModel):
    id: str
    thread_id: str
    status: str
    pattern: str | None
    step: str | None
    output: str | None
    usage: Usage
    error: dict[str, Any] | None
    limits: dict[str, Any] = Field(description="Token, cost and iteration caps of the run.")
    guards: list[dict[str, Any]] = Field(description="Guards that tripped, in order.")
    question: str | None = Field(description="While awaiting_input: the question to answer.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class DecisionOut(BaseModel):
    seq: int
    dimensions: dict[str, Any]
    rationale: str
    source: str
    fallback: str | None = Field(description="The fallback reason, or null if none happened.")
    input_range: dict[str, int]
    expected_outcome: str | None
    outcome: dict[str, Any] | None
    input_tokens: int
    output_tokens: int
    latency_ms: float
    created_at: datetime


class OrchestrationOut(BaseModel):
    run_id: str
    decisions: list[DecisionOut]
    cursor: int
    budget: dict[str, int]
    summary: str | None
    outcome: dict[str, Any] | None
    postmortem: dict[str, Any] | None
