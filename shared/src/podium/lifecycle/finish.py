"""The end of a run, inside the step that ends it: open calls cancelled, usage summed, the
thread handed to its next queued run, the learner told, the tenant's reservation settled
after the commit."""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy import func, select, update

from podium.lifecycle.plan import RunEnd, StepPlan
from podium.lifecycle.run_state import OPEN_CALLS
from podium.lifecycle.threads import append_event
from podium.messages import AdvanceRun, RunCompleted
from podium.runtime import Runtime, Tx
from podium.store import (
    AgentCall,
    CallStatus,
    EventKind,
    Run,
    RunStatus,
    Thread,
    utcnow,
)


def finish(
    runtime: Runtime, tx: Tx, plan: StepPlan, end: RunEnd, orchestrator_tokens: int | None
) -> None:
    """End the run (its context's outcome was written with the step's context change)."""
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
    plan.emit(
        f"run.{end.status.value}",
        status=end.status.value,
        output=end.output,
        error=end.error,
        usage=usage,
        note=end.note,
    )
