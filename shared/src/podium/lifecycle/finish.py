"""The end of a run, inside the transaction that ends it: open calls cancelled, usage
summed, the thread handed to its next queued run, the learner told, the tenant's reservation
settled after the commit.

Two transitions end a run: the orchestrator's step (``apply_step``, whatever the pattern
decided), and the commit of a call marked ``ends_run`` (``end_with_call``): the call of a
``direct`` run, whose success is the run's answer, ends the run in the call's own
transaction, so the orchestrator is not woken only to say so."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import exists, func, or_, select, update

from podium.decisions import DecisionOutcome
from podium.lifecycle.plan import RunEnd
from podium.lifecycle.run_state import OPEN_CALLS
from podium.lifecycle.snapshot import CallView
from podium.lifecycle.threads import append_event
from podium.messages import AdvanceRun, RunCompleted
from podium.runtime import Runtime, Tx
from podium.store import (
    AgentCall,
    CallStatus,
    EventKind,
    OrchestrationContext,
    OrchestrationDecision,
    Run,
    RunStatus,
    Thread,
    utcnow,
)

Emit = Callable[..., None]


@dataclass(frozen=True)
class RunRef:
    run_id: str
    tenant_id: str
    thread_id: str


def finish(
    runtime: Runtime,
    tx: Tx,
    plan: RunRef,
    end: RunEnd,
    orchestrator_tokens: int | None,
    emit: Emit,
) -> None:
    """End the run (its context's outcome was written with the same transaction's context
    change); ``emit(type, **data)`` takes the run's end event, published after the commit."""
    # Core statements on the connection: no ORM bookkeeping on the hot path.
    session = tx.session.connection()
    now = utcnow()
    session.execute(
        update(AgentCall)
        .where(AgentCall.run_id == plan.run_id, AgentCall.status.in_(OPEN_CALLS))
        .values(status=CallStatus.CANCELLED.value, finished_at=now)
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
    usage = {
        "input_tokens": int(tokens_in),
        "output_tokens": int(tokens_out),
        "orchestrator_tokens": int(orchestrator_tokens or 0),
        "cost_usd": round(float(cost), 6),
    }
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
    session.execute(update(Run).where(Run.id == plan.run_id).values(**values))
    session.execute(
        update(Thread)
        .where(Thread.id == plan.thread_id, Thread.active_run_id == plan.run_id)
        .values(active_run_id=None)
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
    tokens = int(tokens_in) + int(tokens_out) + int(orchestrator_tokens or 0)
    tx.after_commit.append(
        partial(runtime.quotas.settle, plan.tenant_id, plan.run_id, tokens, float(cost))
    )
    emit(
        f"run.{end.status.value}",
        status=end.status.value,
        output=end.output,
        error=end.error,
        usage=usage,
        note=end.note,
    )


@dataclass(frozen=True)
class EndedByCall:
    """A run ended by its last call's commit: what its worker publishes and counts."""

    status: RunStatus
    pattern: str
    duration_s: float
    events: list[tuple[str, dict[str, Any]]]


def end_with_call(runtime: Runtime, tx: Tx, call: CallView, output: str) -> EndedByCall | None:
    """End the run of a call marked ``ends_run`` that just succeeded (in the call's commit
    transaction), exactly as the orchestrator's step would on ``Complete(call.output)``.

    Only a run still running as planned: not cancelled, not past its deadline, with no other
    call open. Otherwise (None) nothing is written here and the caller wakes the
    orchestrator, which decides as usual. The run's version moves on, so a step planned on
    the old state meanwhile is refused and plans again on the ended run."""
    session = tx.session.connection()
    now = utcnow()
    others_open = exists().where(AgentCall.run_id == Run.id, AgentCall.status.in_(OPEN_CALLS))
    row = session.execute(
        update(Run)
        .where(
            Run.id == call.run_id,
            Run.status == RunStatus.RUNNING.value,
            Run.cancel_requested.is_(False),
            or_(Run.deadline_at.is_(None), Run.deadline_at > now),
            ~others_open,
        )
        .values(version=Run.version + 1)
        .returning(Run.thread_id, Run.guards, Run.pattern, Run.created_at)
    ).first()
    if row is None:
        return None
    thread_id, guards, pattern, created_at = row
    end = RunEnd(RunStatus.COMPLETED, output=output)
    # The decisions still open get their outcome: the plan this call executed counts it.
    open_seqs = [
        seq
        for seq, outcome in session.execute(
            select(OrchestrationDecision.seq, OrchestrationDecision.actual_outcome).where(
                OrchestrationDecision.run_id == call.run_id
            )
        )
        if not outcome
    ]
    for seq in open_seqs:
        outcome = DecisionOutcome(
            status=end.status.value, agent_calls=1 if seq == call.decision_seq else 0
        )
        session.execute(
            update(OrchestrationDecision)
            .where(OrchestrationDecision.run_id == call.run_id, OrchestrationDecision.seq == seq)
            .values(actual_outcome=outcome.as_dict())
        )
    tokens: int | None = session.scalar(
        update(OrchestrationContext)
        .where(OrchestrationContext.run_id == call.run_id)
        .values(
            outcome={
                "status": end.status.value,
                "error": None,
                "note": None,
                "guards": list(guards or []),
            },
            updated_at=now,
        )
        .returning(OrchestrationContext.tokens_used)
    )
    events: list[tuple[str, dict[str, Any]]] = []
    finish(
        runtime,
        tx,
        RunRef(call.run_id, call.tenant_id, thread_id),
        end,
        tokens,
        lambda type_, **data: events.append((type_, data)),
    )
    return EndedByCall(
        status=end.status,
        pattern=str(pattern or ""),
        duration_s=max(0.0, (now - created_at).total_seconds()),
        events=events,
    )
