"""SQLAlchemy 2.0 models of the store (docs/architecture.md, "Layers" and "Data").

Every tenant-owned row carries ``tenant_id`` (mixin ``TenantOwned``); tenant scoping of
queries is applied in one place, ``podium.store.scoping``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite would hand back naive datetimes)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_INPUT = "awaiting_input"
    BUDGET_HOLD = "budget_hold"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


class CallStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_CALL_STATUSES = frozenset({CallStatus.SUCCEEDED, CallStatus.FAILED, CallStatus.CANCELLED})


class EventKind(StrEnum):
    USER_MESSAGE = "user_message"
    AGENT_MESSAGE = "agent_message"
    TOOL_REQUEST = "tool_request"
    TOOL_RESPONSE = "tool_response"
    SUMMARY = "summary"
    DELEGATION = "delegation"


class TenantOwned:
    """Mixin: the row belongs to one tenant. Scoped queries filter on this column."""

    tenant_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    default_agent: Mapped[str] = mapped_column(String(100), default="assistant")
    # Per-tenant overrides of the deployment's default limits (podium.quotas.LIMIT_FIELDS);
    # a missing key means "the default".
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(TenantOwned, Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # SHA-256 of the whole key. Keys are 256-bit random tokens, so a fast hash is enough:
    # a leaked table cannot be brute-forced back into keys.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # First characters of the key, shown to operators to tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Agent(TenantOwned, Base):
    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    instructions: Mapped[str] = mapped_column(Text, default="")
    provider: Mapped[str | None] = mapped_column(String(50))
    model: Mapped[str | None] = mapped_column(String(200))
    temperature: Mapped[float] = mapped_column(Float, default=0.0)
    max_output_tokens: Mapped[int] = mapped_column(Integer, default=1024)
    tools: Mapped[list[Any]] = mapped_column(default=list)
    sub_agents: Mapped[list[Any]] = mapped_column(default=list)
    pool: Mapped[str] = mapped_column(String(50), default="default")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Thread(TenantOwned, Base):
    __tablename__ = "threads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    title: Mapped[str | None] = mapped_column(String(500))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    # Number of events appended; incremented under the row's lock to give each event its seq.
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    last_agent: Mapped[str | None] = mapped_column(String(100))
    # Sub-threads (parallel team members work in clean context) point at their parent.
    parent_thread_id: Mapped[str | None] = mapped_column(String(32), index=True)
    # The run that currently owns the thread; runs on one thread execute one at a time.
    active_run_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ThreadEvent(TenantOwned, Base):
    __tablename__ = "thread_events"
    __table_args__ = (UniqueConstraint("thread_id", "seq"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("threads.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(30))
    role: Mapped[str] = mapped_column(String(20))
    agent: Mapped[str | None] = mapped_column(String(100))
    content: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    run_id: Mapped[str | None] = mapped_column(String(32), index=True)
    call_id: Mapped[str | None] = mapped_column(String(32))
    # Set for events that must be written once (an agent call's answer): redelivered work
    # trips the unique constraint instead of appending a duplicate message.
    dedupe_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Run(TenantOwned, Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_runs_thread_status", "thread_id", "status"),
        Index("ix_runs_status_deadline", "status", "deadline_at"),
        # The reaper's look at runs finished within the hour (lost post-mortems).
        Index("ix_runs_finished_at", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(String(32), ForeignKey("threads.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.QUEUED)
    input: Mapped[str] = mapped_column(Text)
    input_event_seq: Mapped[int] = mapped_column(Integer)
    requested_agent: Mapped[str | None] = mapped_column(String(100))
    requested_pattern: Mapped[str | None] = mapped_column(String(50))
    multitask: Mapped[str] = mapped_column(String(20), default="enqueue")
    pattern: Mapped[str | None] = mapped_column(String(50))
    step: Mapped[str | None] = mapped_column(String(100))
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    usage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Caps: {"tokens": int, "cost_usd": float, "iterations": int}; resume doubles them.
    limits: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    # Guard hits, in order: [{"guard": ..., "detail": ..., "at": ...}].
    guards: Mapped[list[Any]] = mapped_column(default=list)
    # The request class the first decision settled on (the learner's statistics key).
    request_class: Mapped[str | None] = mapped_column(String(30))
    # The question an ask_user decision put to the user, while awaiting_input.
    awaiting: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Bumped by every transition of the run (podium.lifecycle): a step applies what it
    # decided only if the run is still at the version it planned on.
    version: Mapped[int] = mapped_column(Integer, default=1)


class AgentCall(TenantOwned, Base):
    __tablename__ = "agent_calls"
    __table_args__ = (
        Index("ix_agent_calls_run_status", "run_id", "status"),
        # The reaper's scans of pending and running calls, without reading the history.
        Index("ix_agent_calls_status_created", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("runs.id", ondelete="CASCADE"))
    thread_id: Mapped[str] = mapped_column(String(32))
    decision_seq: Mapped[int] = mapped_column(Integer)
    agent: Mapped[str] = mapped_column(String(100))
    pool: Mapped[str] = mapped_column(String(50), default="default")
    status: Mapped[str] = mapped_column(String(20), default=CallStatus.PENDING)
    # The call's part in its pattern ("answer", "planner", "executor", "producer", "critic",
    # "member", "merge", "stage", "delegate") and its position in that part.
    role: Mapped[str] = mapped_column(String(30), default="answer")
    step_index: Mapped[int] = mapped_column(Integer, default=0)
    parent_call_id: Mapped[str | None] = mapped_column(String(32))
    depth: Mapped[int] = mapped_column(Integer, default=0)
    # An explicit instruction given after the context (a plan step, a review request...).
    task: Mapped[str | None] = mapped_column(Text)
    # "thread": the thread so far; "clean": only the task.
    context_mode: Mapped[str] = mapped_column(String(10), default="thread")
    # Control outcome of a call that ended by handing control back: {"control": "handoff" |
    # "delegate", "agent": ..., ...}.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    tool_steps: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Thread events up to this seq are the call's context.
    context_until_seq: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    provider: Mapped[str | None] = mapped_column(String(50))
    model: Mapped[str | None] = mapped_column(String(200))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    message_event_id: Mapped[str | None] = mapped_column(String(32))
    # The call's success is its run's answer, with nothing left to decide (a ``direct``
    # run): its worker ends the run in the call's commit instead of waking the orchestrator.
    ends_run: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # What the call actually ran with: {"model", "temperature", "max_output_tokens", "tools"}
    # of its first LLM request (the decided parameters are in ``params``).
    used: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class OrchestrationContext(TenantOwned, Base):
    __tablename__ = "orchestration_contexts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("runs.id", ondelete="CASCADE"), unique=True
    )
    # Thread events up to this seq have been seen by a decision (docs/architecture.md, "The
    # OrchestrationContext": later decisions see only the delta).
    cursor_seq: Mapped[int] = mapped_column(Integer, default=0)
    # The enforced budget of the Orchestrator agent's own tokens (orchestrator_token_budget
    # when the run was admitted); past it, decisions fall back without an LLM call.
    token_budget: Mapped[int] = mapped_column(Integer, default=8000)
    tokens_used: Mapped[int] = mapped_column(Integer, default=0)
    # Older decisions folded into ``summary`` once the history outgrew its token budget.
    summary: Mapped[str | None] = mapped_column(Text)
    summarized_through_seq: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    has_feedback: Mapped[bool] = mapped_column(Boolean, default=False)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class OrchestrationDecision(TenantOwned, Base):
    __tablename__ = "orchestration_decisions"
    __table_args__ = (UniqueConstraint("context_id", "seq"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    context_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("orchestration_contexts.id", ondelete="CASCADE")
    )
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    # {"agent": ..., "pattern": ..., "parameters": {...}, "team": [...]}
    dimensions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    rationale: Mapped[str] = mapped_column(Text)
    # Where the decision came from: "forced by request", "rules", "orchestrator agent",
    # "fallback", "learned policy".
    source: Mapped[str] = mapped_column(String(50))
    fallback_reason: Mapped[str | None] = mapped_column(String(200))
    input_from_seq: Mapped[int] = mapped_column(Integer, default=0)
    input_to_seq: Mapped[int] = mapped_column(Integer, default=0)
    expected_outcome: Mapped[str | None] = mapped_column(Text)
    actual_outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    # Provider and model of the Orchestrator agent call (None for rule-based decisions).
    provider: Mapped[str | None] = mapped_column(String(50))
    model: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PostMortem(TenantOwned, Base):
    __tablename__ = "postmortems"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("runs.id", ondelete="CASCADE"), unique=True
    )
    event_id: Mapped[str] = mapped_column(String(32))
    facts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    review: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Feedback(TenantOwned, Base):
    """A user's delayed rating of a run, or of one message of it (docs/architecture.md,
    "Learning")."""

    __tablename__ = "feedback"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("runs.id", ondelete="CASCADE"), index=True
    )
    message_id: Mapped[str | None] = mapped_column(String(32))
    api_key_id: Mapped[str] = mapped_column(String(32))
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    # One feedback per (run, API key, message): a repeat returns the same row.
    dedupe_key: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RunOutcome(TenantOwned, Base):
    """What the learner knows of one finished run: the inputs of its statistics."""

    __tablename__ = "run_outcomes"
    __table_args__ = (Index("ix_run_outcomes_class", "tenant_id", "request_class"),)

    run_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    request_class: Mapped[str] = mapped_column(String(30))
    pattern: Mapped[str] = mapped_column(String(50))
    agents: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(20))
    feedback_count: Mapped[int] = mapped_column(Integer, default=0)
    mean_rating: Mapped[float | None] = mapped_column(Float)
    good: Mapped[bool] = mapped_column(Boolean)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    # The pattern a learned policy overruled for this run, if any.
    overruled_from: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class LearningStat(TenantOwned, Base):
    """Per tenant x request class x pattern (or agent): counts and a Beta posterior of a good
    outcome. Recomputed from run_outcomes, so replays and duplicates cannot skew it."""

    __tablename__ = "learning_stats"
    __table_args__ = (UniqueConstraint("tenant_id", "request_class", "dimension", "value"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request_class: Mapped[str] = mapped_column(String(30))
    dimension: Mapped[str] = mapped_column(String(10))  # "pattern" or "agent"
    value: Mapped[str] = mapped_column(String(100))
    samples: Mapped[int] = mapped_column(Integer, default=0)
    good: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    feedback_count: Mapped[int] = mapped_column(Integer, default=0)
    mean_rating: Mapped[float | None] = mapped_column(Float)
    mean_cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    mean_latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class OutboxMessage(Base):
    """A message to another service, written in the same transaction as the state change."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "published_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    task: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # A sweeper publishing the row owns it until then (podium.outbox).
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DeadLetter(Base):
    """A message no consumer could apply (invalid, unknown, or out of retries), kept with its
    payload and error so an operator can inspect and replay it (``podium dlq``)."""

    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_created", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    task: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str | None] = mapped_column(String(100))
    payload: Mapped[Any] = mapped_column(JSON)
    error: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(30))  # invalid, unknown_task, rejected, exhausted
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ProcessedEvent(Base):
    """Consumer-side deduplication: one row per (consumer, event id) already applied."""

    __tablename__ = "processed_events"

    consumer: Mapped[str] = mapped_column(String(50), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
