"""What the orchestrator's step reads before it decides: an immutable snapshot of one run
(its row with its version, its OrchestrationContext, its agent calls and decisions, and who
owns its thread), loaded in one short read. The step plans on it with no transaction open
and applies its plan with ``podium.lifecycle.runs.apply_step``, which checks the version."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, exists, select
from sqlalchemy.orm import Session

from podium.decisions import Decision
from podium.lifecycle import sql
from podium.store import (
    TERMINAL_CALL_STATUSES,
    TERMINAL_RUN_STATUSES,
    AgentCall,
    CallStatus,
    Database,
    OrchestrationContext,
    OrchestrationDecision,
    Run,
    RunStatus,
    Thread,
)


@dataclass(frozen=True)
class RunState:
    id: str
    tenant_id: str
    thread_id: str
    status: RunStatus
    version: int
    cancel_requested: bool
    input: str
    input_event_seq: int
    requested_agent: str | None
    requested_pattern: str | None
    pattern: str | None
    limits: dict[str, Any]
    guards: tuple[dict[str, Any], ...]
    awaiting: dict[str, Any] | None
    request_class: str | None
    deadline_at: datetime | None
    created_at: datetime
    started_at: datetime | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_RUN_STATUSES


@dataclass(frozen=True)
class ContextState:
    id: str
    cursor_seq: int
    token_budget: int
    tokens_used: int
    summary: str | None
    summarized_through_seq: int


@dataclass(frozen=True)
class CallView:
    """One agent call as the orchestrator sees it."""

    id: str
    run_id: str
    tenant_id: str
    agent: str
    pool: str
    status: CallStatus
    role: str
    step_index: int
    decision_seq: int
    thread_id: str
    parent_call_id: str | None
    depth: int
    task: str | None
    context_mode: str
    params: dict[str, Any]
    output: str | None
    error: dict[str, Any] | None
    # How a call that handed control back ended: {"control": "handoff" | "delegate", ...}.
    control: dict[str, Any] | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    created_at: datetime
    # Its success ends the run (``agent_calls.ends_run``).
    ends_run: bool = False

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_CALL_STATUSES

    @property
    def in_flight(self) -> bool:
        return not self.finished

    @property
    def failed(self) -> bool:
        return self.status in (CallStatus.FAILED, CallStatus.CANCELLED)

    @property
    def handed_back(self) -> str | None:
        """``"handoff"`` or ``"delegate"`` when the call ended by handing control back."""
        if self.status != CallStatus.SUCCEEDED or not self.control:
            return None
        kind = self.control.get("control")
        return str(kind) if kind in ("handoff", "delegate") else None

    @classmethod
    def of(cls, row: Any) -> CallView:
        """From an ``AgentCall`` or a row of ``agent_calls``."""
        return cls(
            id=row.id,
            run_id=row.run_id,
            tenant_id=row.tenant_id,
            agent=row.agent,
            pool=row.pool,
            status=CallStatus(row.status),
            role=row.role,
            step_index=row.step_index,
            decision_seq=row.decision_seq,
            thread_id=row.thread_id,
            parent_call_id=row.parent_call_id,
            depth=row.depth,
            task=row.task,
            context_mode=row.context_mode,
            params=dict(row.params or {}),
            output=row.output,
            error=row.error,
            control=row.result,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            cost_usd=row.cost_usd,
            created_at=row.created_at,
            ends_run=bool(row.ends_run),
        )


@dataclass(frozen=True)
class RunSnapshot:
    run: RunState
    context: ContextState
    calls: tuple[CallView, ...]
    decisions: tuple[Decision, ...]
    # The thread's last speaking agent, and whether this run may own the thread now (no older
    # unfinished run on it, and no other run holding it).
    last_agent: str | None
    thread_free: bool

    @property
    def version(self) -> int:
        return self.run.version

    @property
    def last_seq(self) -> int:
        return max((d.seq for d in self.decisions), default=0)


def _run_state(run: Any) -> RunState:
    return RunState(
        id=run.id,
        tenant_id=run.tenant_id,
        thread_id=run.thread_id,
        status=RunStatus(run.status),
        version=run.version,
        cancel_requested=run.cancel_requested,
        input=run.input,
        input_event_seq=run.input_event_seq,
        requested_agent=run.requested_agent,
        requested_pattern=run.requested_pattern,
        pattern=run.pattern,
        limits=dict(run.limits or {}),
        guards=tuple(run.guards or ()),
        awaiting=dict(run.awaiting) if run.awaiting else None,
        request_class=run.request_class,
        deadline_at=run.deadline_at,
        created_at=run.created_at,
        started_at=run.started_at,
    )


_runs = sql.table(Run)
_contexts = sql.table(OrchestrationContext)
_threads = sql.table(Thread)
_calls = sql.table(AgentCall)
_decisions = sql.table(OrchestrationDecision)
_older = _runs.alias("older")

# The run, its context, its thread, the thread's oldest unfinished run and whether the run has
# decisions: one query, built once.
_RUN_ROW = (
    select(
        *_runs.c,
        *(c.label(f"ctx_{c.name}") for c in _contexts.c),
        _threads.c.last_agent.label("thread_last_agent"),
        _threads.c.active_run_id.label("thread_owner"),
        select(_older.c.id)
        .where(
            _older.c.thread_id == _runs.c.thread_id,
            _older.c.status.not_in([s.value for s in TERMINAL_RUN_STATUSES]),
        )
        .order_by(_older.c.created_at, _older.c.id)
        .limit(1)
        .scalar_subquery()
        .label("thread_oldest_open"),
        exists().where(_decisions.c.context_id == _contexts.c.id).label("has_decisions"),
    )
    .select_from(_runs)
    .join(_contexts, _contexts.c.run_id == _runs.c.id)
    .join(_threads, _threads.c.id == _runs.c.thread_id)
    .where(_runs.c.id == bindparam("p_run_id"))
)
_CALLS = (
    select(_calls)
    .where(_calls.c.run_id == bindparam("p_run_id"))
    .order_by(_calls.c.created_at, _calls.c.id)
)
_DECISIONS = (
    select(_decisions)
    .where(_decisions.c.context_id == bindparam("p_context_id"))
    .order_by(_decisions.c.seq)
)


def load_snapshot(db: Database, run_id: str) -> RunSnapshot | None:
    """The run as it stands, or None if it does not exist (a short read)."""
    with db.read() as session:
        return read_snapshot(session, run_id)


def read_snapshot(session: Session, run_id: str) -> RunSnapshot | None:
    """The same, in the caller's read session. Rows are read as plain rows, not ORM
    objects: a snapshot is read on every step. Three queries: the run with its context, its
    thread, the thread's oldest unfinished run and whether it has decisions; then its calls
    (none for a queued run) and its decisions (when it has some)."""
    conn = session.connection()
    row = conn.execute(_RUN_ROW, {"p_run_id": run_id}).first()
    if row is None:
        return None
    state = _run_state(row)
    ctx = _context_of(row)
    if state.terminal:
        return RunSnapshot(state, ctx, (), (), None, False)
    # A queued run has never started, so it has no calls yet (only admission makes a run
    # queued): its first step skips that read.
    calls = (
        [] if state.status == RunStatus.QUEUED else conn.execute(_CALLS, {"p_run_id": run_id}).all()
    )
    decisions = (
        conn.execute(_DECISIONS, {"p_context_id": ctx.id}).all() if row.has_decisions else []
    )
    free = row.thread_owner in (None, row.id)
    if free and state.status == RunStatus.QUEUED:
        free = row.thread_oldest_open == row.id
    return RunSnapshot(
        run=state,
        context=ctx,
        calls=tuple(CallView.of(c) for c in calls),
        decisions=tuple(Decision.from_row(d) for d in decisions),
        last_agent=row.thread_last_agent,
        thread_free=free,
    )


def _context_of(row: Any) -> ContextState:
    return ContextState(
        id=row.ctx_id,
        cursor_seq=row.ctx_cursor_seq,
        token_budget=row.ctx_token_budget,
        tokens_used=row.ctx_tokens_used,
        summary=row.ctx_summary,
        summarized_through_seq=row.ctx_summarized_through_seq,
    )
