"""Transitions of a run: admit (with answer and interrupt), cancel, resume, apply an
orchestrator step, record superseded decisions, and nudge runs the reaper found stalled.

Each is one short transaction guarded by the run's status or version, and stages the messages
it causes in the outbox in that transaction. None of them calls an LLM or waits on anything
but the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from podium.decisions import Decision, DecisionOutcome
from podium.lifecycle.errors import Conflict, NotFound
from podium.lifecycle.plan import NewCall, RunEnd, StepPlan
from podium.lifecycle.threads import append_event, open_sub_thread
from podium.lifecycle.tx import owned_transaction
from podium.messages import AdvanceRun, RunCompleted, SubmitAgentCall
from podium.runtime import Runtime, Tx
from podium.store import (
    TERMINAL_RUN_STATUSES,
    AgentCall,
    CallStatus,
    EventKind,
    OrchestrationContext,
    OrchestrationDecision,
    Run,
    RunStatus,
    Thread,
    new_id,
    utcnow,
)

log = logging.getLogger(__name__)

_TERMINAL = [s.value for s in TERMINAL_RUN_STATUSES]
_OPEN_CALLS = [CallStatus.PENDING.value, CallStatus.RUNNING.value]


def _unfinished(session: Session, thread_id: str) -> tuple[str, str] | None:
    """The thread's oldest unfinished run: (id, status)."""
    row = session.execute(
        select(Run.id, Run.status)
        .where(Run.thread_id == thread_id, Run.status.not_in(_TERMINAL))
        .order_by(Run.created_at, Run.id)
        .limit(1)
    ).first()
    return (row[0], row[1]) if row else None


def _request_cancel(session: Session, run_id: str) -> bool:
    """Mark a run for cancellation; its next step ends it. Bumps the version, so a step that
    is deciding meanwhile finds its decision superseded."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.not_in(_TERMINAL), Run.cancel_requested.is_(False))
        .values(cancel_requested=True, version=Run.version + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --- admission --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRequest:
    input: str
    agent: str | None
    pattern: str | None
    multitask: str  # reject | enqueue | interrupt
    idempotency_key: str | None
    request_hash: str
    deadline_at: datetime
    limits: dict[str, Any]


@dataclass(frozen=True)
class Admitted:
    run_id: str
    status: str
    thread_id: str
    # False: the input answered the question of a run awaiting it; no run was created.
    created: bool = True
    interrupted_run_id: str | None = None


def admit(
    runtime: Runtime,
    tenant_id: str,
    thread_id: str,
    request: RunRequest,
    *,
    run_id: str,
    token_budget: int,
) -> Admitted:
    """Append the prompt to the thread and create its run, queued; or, when the thread's run
    is waiting for the user, the prompt is that answer."""
    with owned_transaction(runtime, tenant_id) as tx:
        session = tx.session
        if session.scalars(select(Thread.id).where(Thread.id == thread_id)).first() is None:
            raise NotFound("thread", thread_id)
        active = _unfinished(session, thread_id)
        if active is not None and active[1] == RunStatus.AWAITING_INPUT:
            return _answer(tx, tenant_id, thread_id, active[0], request.input)
        if active is not None and request.multitask == "reject":
            raise Conflict(
                "thread_busy",
                "the thread has an unfinished run; retry later or use multitask=enqueue",
                active_run_id=active[0],
            )
        _, seq = append_event(
            session,
            tenant_id=tenant_id,
            thread_id=thread_id,
            kind=EventKind.USER_MESSAGE,
            role="user",
            content=request.input,
            run_id=run_id,
        )
        now = utcnow()
        session.execute(
            insert(Run).values(
                id=run_id,
                tenant_id=tenant_id,
                thread_id=thread_id,
                status=RunStatus.QUEUED.value,
                input=request.input,
                input_event_seq=seq,
                requested_agent=request.agent,
                requested_pattern=request.pattern,
                multitask=request.multitask,
                idempotency_key=request.idempotency_key,
                request_hash=request.request_hash,
                deadline_at=request.deadline_at,
                limits=request.limits,
                usage={},
                guards=[],
                cost_usd=0.0,
                cancel_requested=False,
                version=1,
                created_at=now,
            )
        )
        session.execute(
            insert(OrchestrationContext).values(
                id=new_id(),
                tenant_id=tenant_id,
                run_id=run_id,
                cursor_seq=0,
                token_budget=token_budget,
                tokens_used=0,
                summarized_through_seq=0,
                has_feedback=False,
                archived=False,
                created_at=now,
                updated_at=now,
            )
        )
        interrupted = None
        interrupt = active is not None and request.multitask == "interrupt"
        if active is not None and interrupt and _request_cancel(session, active[0]):
            tx.send(AdvanceRun(run_id=active[0], reason="run.cancel"))
            interrupted = active[0]
        tx.send(AdvanceRun(run_id=run_id, reason="run.created"))
        return Admitted(run_id, RunStatus.QUEUED.value, thread_id, interrupted_run_id=interrupted)


def _answer(tx: Tx, tenant_id: str, thread_id: str, run_id: str, text: str) -> Admitted:
    awaiting = tx.session.scalar(select(Run.awaiting).where(Run.id == run_id)) or {}
    append_event(
        tx.session,
        tenant_id=tenant_id,
        thread_id=thread_id,
        kind=EventKind.USER_MESSAGE,
        role="user",
        content=text,
        run_id=run_id,
        data={"answers": awaiting.get("question")},
    )
    tx.send(AdvanceRun(run_id=run_id, reason="user.answered"))
    return Admitted(run_id, RunStatus.AWAITING_INPUT.value, thread_id, created=False)


# --- cancel and resume ------------------------------------------------------------------------


def cancel(runtime: Runtime, tenant_id: str, run_id: str) -> str:
    """Ask a run to stop (idempotent). Returns its status; the next step ends it."""
    with owned_transaction(runtime, tenant_id) as tx:
        if _request_cancel(tx.session, run_id):
            tx.send(AdvanceRun(run_id=run_id, reason="run.cancel"))
        row = tx.session.execute(select(Run.status).where(Run.id == run_id)).first()
        if row is None:
            raise NotFound("run", run_id)
        if row[0] in _TERMINAL:
            raise Conflict(
                "run_finished", f"run already finished with status {row[0]}", run_status=row[0]
            )
        return str(row[0])


def resume(
    runtime: Runtime, tenant_id: str, run_id: str, *, version: int, limits: dict[str, Any]
) -> None:
    """A run held by a cap continues with ``limits``, if it is still the held run the caller
    read (``version``)."""
    with owned_transaction(runtime, tenant_id) as tx:
        result = tx.session.execute(
            update(Run)
            .where(
                Run.id == run_id,
                Run.version == version,
                Run.status == RunStatus.BUDGET_HOLD.value,
            )
            .values(status=RunStatus.RUNNING.value, step=None, limits=limits, version=version + 1)
            .execution_options(synchronize_session=False)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise Conflict("conflict", "the run changed while resuming; retry", retry_after_s=1)
        tx.send(AdvanceRun(run_id=run_id, reason="run.resumed"))


# --- an orchestrator step ---------------------------------------------------------------------


@dataclass(frozen=True)
class StepApplied:
    applied: bool
    # Why not: "stale" (the run moved on since the snapshot), "thread_busy" (another run took
    # the thread first).
    reason: str | None = None
    finished: RunStatus | None = None
    duration_s: float | None = None


class _Abort(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def apply_step(runtime: Runtime, plan: StepPlan) -> StepApplied:
    """Write what a step decided, if the run is still at ``plan.version``."""
    if not plan.writes:
        return StepApplied(True)
    try:
        with owned_transaction(runtime) as tx:
            return _apply(runtime, tx, plan)
    except _Abort as abort:
        return StepApplied(False, abort.reason)


def _apply(runtime: Runtime, tx: Tx, plan: StepPlan) -> StepApplied:
    session = tx.session
    now = utcnow()
    values: dict[str, Any] = {"version": plan.version + 1}
    if plan.start:
        values.update(status=RunStatus.RUNNING.value, started_at=now)
    if plan.answer is not None:
        values.update(status=RunStatus.RUNNING.value, step=None)
    for key in ("pattern", "step", "request_class"):
        if getattr(plan, key) is not None:
            values[key] = getattr(plan, key)
    if plan.hold:
        values.update(status=RunStatus.BUDGET_HOLD.value, step="budget_hold")
    current = session.execute(
        update(Run)
        .where(Run.id == plan.run_id, Run.version == plan.version, Run.status.not_in(_TERMINAL))
        .values(**values)
        .returning(Run.guards, Run.awaiting, Run.created_at)
        .execution_options(synchronize_session=False)
    ).first()
    if current is None:
        raise _Abort("stale")
    guards, awaiting, created_at = list(current[0] or []), dict(current[1] or {}), current[2]
    if plan.start and not _take_thread(session, plan):
        raise _Abort("thread_busy")
    if plan.guards or plan.answer is not None:
        if plan.answer is not None:
            awaiting["answer"] = plan.answer
        session.execute(
            update(Run)
            .where(Run.id == plan.run_id)
            .values(guards=[*guards, *plan.guards], awaiting=awaiting or None)
            .execution_options(synchronize_session=False)
        )
    context_id = session.scalars(
        select(OrchestrationContext.id).where(OrchestrationContext.run_id == plan.run_id)
    ).one()
    _record_decisions(session, plan, context_id, plan.decisions)
    for seq, outcome in plan.outcomes.items():
        _set_outcome(session, context_id, seq, outcome)
    for message in plan.messages:
        append_event(
            session,
            tenant_id=plan.tenant_id,
            thread_id=message.thread_id,
            kind=message.kind,
            role=message.role,
            agent=message.agent,
            content=message.content,
            run_id=plan.run_id,
            call_id=message.call_id,
            data=message.data,
        )
    _insert_calls(tx, plan)
    cursor = plan.context.cursor_seq
    if plan.question is not None:
        cursor = _ask(session, plan, awaiting)
    _update_context(session, plan, context_id, cursor)
    finished, duration = None, None
    if plan.end is not None:
        _finish(runtime, tx, plan, plan.end, context_id)
        finished = plan.end.status
        duration = (utcnow() - created_at).total_seconds()
    return StepApplied(True, finished=finished, duration_s=duration)


def _take_thread(session: Session, plan: StepPlan) -> bool:
    """Runs of one thread execute one at a time, oldest first."""
    oldest = _unfinished(session, plan.thread_id)
    if oldest is None or oldest[0] != plan.run_id:
        return False
    taken = session.execute(
        update(Thread)
        .where(
            Thread.id == plan.thread_id,
            (Thread.active_run_id.is_(None)) | (Thread.active_run_id == plan.run_id),
        )
        .values(active_run_id=plan.run_id)
        .execution_options(synchronize_session=False)
    )
    return bool(taken.rowcount)  # type: ignore[attr-defined]


def _record_decisions(
    session: Session, plan: StepPlan, context_id: str, decisions: list[Decision]
) -> None:
    if not decisions:
        return
    now = utcnow()
    session.execute(
        insert(OrchestrationDecision),
        [
            {
                "id": new_id(),
                "tenant_id": plan.tenant_id,
                "context_id": context_id,
                "run_id": plan.run_id,
                "created_at": now,
                **d.row_values(),
            }
            for d in decisions
        ],
    )


def _set_outcome(session: Session, context_id: str, seq: int, outcome: DecisionOutcome) -> None:
    session.execute(
        update(OrchestrationDecision)
        .where(OrchestrationDecision.context_id == context_id, OrchestrationDecision.seq == seq)
        .values(actual_outcome=outcome.as_dict())
        .execution_options(synchronize_session=False)
    )


def _insert_calls(tx: Tx, plan: StepPlan) -> None:
    if not plan.calls:
        return
    session = tx.session
    until: dict[str, int] = {}
    rows = []
    for call in plan.calls:
        if call.sub_thread is not None:
            open_sub_thread(
                session,
                tenant_id=plan.tenant_id,
                thread_id=call.sub_thread.id,
                parent_thread_id=plan.thread_id,
                title=call.sub_thread.title,
            )
            _, seq = append_event(
                session,
                tenant_id=plan.tenant_id,
                thread_id=call.sub_thread.id,
                kind=EventKind.USER_MESSAGE,
                role="user",
                content=call.sub_thread.task,
                run_id=plan.run_id,
            )
            until_seq = seq
        else:
            if call.thread_id not in until:
                until[call.thread_id] = int(
                    session.scalar(select(Thread.event_count).where(Thread.id == call.thread_id))
                    or 0
                )
            until_seq = until[call.thread_id]
        rows.append(_call_row(plan, call, until_seq))
    session.execute(insert(AgentCall), rows)
    for call in plan.calls:
        tx.send(
            SubmitAgentCall(
                call_id=call.id,
                run_id=plan.run_id,
                tenant_id=plan.tenant_id,
                pool=call.pool,
                tenant_cap=plan.tenant_call_cap,
            ),
            queue=f"fair:{call.pool}",
        )


def _call_row(plan: StepPlan, call: NewCall, until_seq: int) -> dict[str, Any]:
    return {
        "id": call.id,
        "tenant_id": plan.tenant_id,
        "run_id": plan.run_id,
        "thread_id": call.sub_thread.id if call.sub_thread else call.thread_id,
        "decision_seq": call.decision_seq,
        "agent": call.agent,
        "pool": call.pool,
        "status": CallStatus.PENDING.value,
        "role": call.role,
        "step_index": call.step_index,
        "parent_call_id": call.parent_call_id,
        "depth": call.depth,
        "task": None if call.sub_thread else call.task,
        "context_mode": call.context_mode,
        "params": call.params,
        "context_until_seq": until_seq,
        "attempts": 0,
        "cost_usd": 0.0,
        "tool_steps": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "created_at": utcnow(),
    }


def _ask(session: Session, plan: StepPlan, awaiting: dict[str, Any]) -> int:
    assert plan.question is not None
    _, seq = append_event(
        session,
        tenant_id=plan.tenant_id,
        thread_id=plan.thread_id,
        kind=EventKind.AGENT_MESSAGE,
        role="assistant",
        agent="orchestrator",
        content=plan.question.text,
        run_id=plan.run_id,
    )
    asked = {
        "question": plan.question.text,
        "decision_seq": plan.question.decision_seq,
        "asked_seq": seq,
        "history": [*awaiting.get("history", []), plan.question.text],
    }
    session.execute(
        update(Run)
        .where(Run.id == plan.run_id)
        .values(awaiting=asked, status=RunStatus.AWAITING_INPUT.value, step="awaiting_input")
        .execution_options(synchronize_session=False)
    )
    return seq


def _update_context(session: Session, plan: StepPlan, context_id: str, cursor: int | None) -> None:
    change = plan.context
    values: dict[str, Any] = {}
    if cursor is not None:
        values["cursor_seq"] = cursor
    if change.tokens_added:
        values["tokens_used"] = OrchestrationContext.tokens_used + change.tokens_added
    if change.summarized_through_seq is not None:
        values["summary"] = change.summary
        values["summarized_through_seq"] = change.summarized_through_seq
    if values:
        values["updated_at"] = utcnow()
        session.execute(
            update(OrchestrationContext)
            .where(OrchestrationContext.id == context_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )


def _finish(runtime: Runtime, tx: Tx, plan: StepPlan, end: RunEnd, context_id: str) -> None:
    session = tx.session
    now = utcnow()
    session.execute(
        update(AgentCall)
        .where(AgentCall.run_id == plan.run_id, AgentCall.status.in_(_OPEN_CALLS))
        .values(status=CallStatus.CANCELLED.value, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    if end.answer_as and end.output:
        append_event(
            session,
            tenant_id=plan.tenant_id,
            thread_id=plan.thread_id,
            kind=EventKind.AGENT_MESSAGE,
            role="assistant",
            agent=end.answer_as,
            content=end.output,
            run_id=plan.run_id,
        )
    tokens_in, tokens_out, cost = session.execute(
        select(
            func.coalesce(func.sum(AgentCall.input_tokens), 0),
            func.coalesce(func.sum(AgentCall.output_tokens), 0),
            func.coalesce(func.sum(AgentCall.cost_usd), 0.0),
        ).where(AgentCall.run_id == plan.run_id)
    ).one()
    orchestrator_tokens = int(
        session.scalar(
            select(OrchestrationContext.tokens_used).where(OrchestrationContext.id == context_id)
        )
        or 0
    )
    usage = {
        "input_tokens": int(tokens_in),
        "output_tokens": int(tokens_out),
        "orchestrator_tokens": orchestrator_tokens,
        "cost_usd": round(float(cost), 6),
    }
    guards = session.scalar(select(Run.guards).where(Run.id == plan.run_id)) or []
    values: dict[str, Any] = {
        "status": end.status.value,
        "error": end.error,
        "finished_at": now,
        "step": None,
        "cost_usd": float(cost),
        "usage": usage,
    }
    if end.output is not None:
        values["output"] = end.output
    session.execute(
        update(Run)
        .where(Run.id == plan.run_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(OrchestrationContext)
        .where(OrchestrationContext.id == context_id)
        .values(
            outcome={
                "status": end.status.value,
                "error": end.error,
                "note": end.note,
                "guards": guards,
            },
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Thread)
        .where(Thread.id == plan.thread_id, Thread.active_run_id == plan.run_id)
        .values(active_run_id=None)
        .execution_options(synchronize_session=False)
    )
    next_run = session.scalars(
        select(Run.id)
        .where(
            Run.thread_id == plan.thread_id,
            Run.status == RunStatus.QUEUED.value,
            Run.id != plan.run_id,
        )
        .order_by(Run.created_at, Run.id)
        .limit(1)
    ).first()
    if next_run is not None:
        tx.send(AdvanceRun(run_id=next_run, reason="thread.released"))
    tx.send(RunCompleted(run_id=plan.run_id, tenant_id=plan.tenant_id, status=end.status.value))
    # The run's reservation on the tenant's budgets becomes its real usage once the end is
    # committed (the reaper settles it if this process dies first).
    tokens = int(tokens_in) + int(tokens_out) + orchestrator_tokens
    tx.after_commit.append(
        partial(runtime.quotas.settle, plan.tenant_id, plan.run_id, tokens, float(cost))
    )
    plan.emit(
        f"run.{end.status.value}",
        status=end.status.value,
        output=end.output,
        error=end.error,
        usage=usage,
        note=end.note,
    )


# --- decisions that were not applied -----------------------------------------------------------


def record_superseded(
    runtime: Runtime, run_id: str, tenant_id: str, decisions: list[Decision], reason: str
) -> list[Decision]:
    """Record decisions that were made but will not be executed (the run was cancelled,
    answered or interrupted meanwhile, or another step applied first): their cost was spent
    and counts against the context's budget. Returns them numbered."""
    if not decisions:
        return []
    with owned_transaction(runtime) as tx:
        session = tx.session
        context_id = session.scalars(
            select(OrchestrationContext.id).where(OrchestrationContext.run_id == run_id)
        ).one_or_none()
        if context_id is None:
            return []
        session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(version=Run.version + 1)
            .execution_options(synchronize_session=False)
        )
        last = session.scalar(
            select(func.max(OrchestrationDecision.seq)).where(
                OrchestrationDecision.context_id == context_id
            )
        )
        numbered = [
            d.numbered((last or 0) + i).with_outcome(
                DecisionOutcome(status="superseded", reason=reason)
            )
            for i, d in enumerate(decisions, start=1)
        ]
        plan = StepPlan(run_id=run_id, tenant_id=tenant_id, thread_id="", version=0)
        _record_decisions(session, plan, context_id, numbered)
        spent = sum(d.usage.tokens for d in decisions)
        if spent:
            session.execute(
                update(OrchestrationContext)
                .where(OrchestrationContext.id == context_id)
                .values(tokens_used=OrchestrationContext.tokens_used + spent)
                .execution_options(synchronize_session=False)
            )
        return numbered


# --- repair -----------------------------------------------------------------------------------


def nudge(runtime: Runtime, run_ids: list[str], reason: str) -> None:
    """Trigger a step of each run (the reaper and the deadline sweep; a step that has nothing
    to do returns at once)."""
    if not run_ids:
        return
    with owned_transaction(runtime) as tx:
        for run_id in run_ids:
            tx.send(AdvanceRun.model_validate({"run_id": run_id, "reason": reason}))


def notify_learner(runtime: Runtime, messages: list[RunCompleted]) -> None:
    """Send the learner the end of runs it has no post-mortem for (it deduplicates)."""
    if not messages:
        return
    with owned_transaction(runtime) as tx:
        for message in messages:
            tx.send(message)
