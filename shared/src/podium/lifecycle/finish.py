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
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import (
    JSON,
    String,
    case,
    cast,
    exists,
    func,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.sql import Select

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


@dataclass(frozen=True)
class Totals:
    """What the run spent: its calls' tokens and cost, and the Orchestrator agent's tokens."""

    input_tokens: int
    output_tokens: int
    cost_usd: float
    orchestrator_tokens: int

    @property
    def usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "orchestrator_tokens": self.orchestrator_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.orchestrator_tokens


def _calls_totals(run_id: str) -> Select[int, int, float]:
    """The run's calls' tokens and cost, summed."""
    return select(
        func.coalesce(func.sum(AgentCall.input_tokens), 0),
        func.coalesce(func.sum(AgentCall.output_tokens), 0),
        func.coalesce(func.sum(AgentCall.cost_usd), 0.0),
    ).where(AgentCall.run_id == run_id)


def _end_values(end: RunEnd, totals: Totals, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {
        "status": end.status.value,
        "error": end.error,
        "finished_at": now,
        "step": None,
        "cost_usd": totals.cost_usd,
        "usage": totals.usage,
    }
    if end.output is not None:
        values["output"] = end.output
    return values


def finish(
    runtime: Runtime,
    tx: Tx,
    run: RunRef,
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
        .where(AgentCall.run_id == run.run_id, AgentCall.status.in_(OPEN_CALLS))
        .values(status=CallStatus.CANCELLED.value, finished_at=now)
    )
    if end.answer_as and end.output:
        append_event(
            session,
            tenant_id=run.tenant_id,
            thread_id=run.thread_id,
            kind=EventKind.AGENT_MESSAGE,
            role="assistant",
            agent=end.answer_as,
            content=end.output,
            run_id=run.run_id,
        )
    tokens_in, tokens_out, cost = session.execute(_calls_totals(run.run_id)).one()
    totals = Totals(int(tokens_in), int(tokens_out), float(cost), int(orchestrator_tokens or 0))
    session.execute(update(Run).where(Run.id == run.run_id).values(**_end_values(end, totals, now)))
    _hand_on(runtime, tx, run, end, totals, emit)


def _hand_on(
    runtime: Runtime, tx: Tx, run: RunRef, end: RunEnd, totals: Totals, emit: Emit
) -> None:
    """After the run's row ended: its thread to the next queued run, the learner told, the
    tenant's reservation settled after the commit, the end event."""
    session = tx.session.connection()
    # The thread is let go (if this run held it) and its next queued run found, in one
    # statement.
    next_queued = (
        select(Run.id)
        .where(
            Run.thread_id == run.thread_id,
            Run.status == RunStatus.QUEUED.value,
            Run.id != run.run_id,
        )
        .order_by(Run.created_at, Run.id)
        .limit(1)
        .scalar_subquery()
    )
    next_run = session.execute(
        update(Thread)
        .where(Thread.id == run.thread_id)
        .values(
            active_run_id=case(
                (Thread.active_run_id == run.run_id, None), else_=Thread.active_run_id
            )
        )
        .returning(next_queued)
    ).scalar()
    if next_run is not None:
        tx.send(AdvanceRun(run_id=next_run, reason="thread.released"))
    tx.send(RunCompleted(run_id=run.run_id, tenant_id=run.tenant_id, status=end.status.value))
    # The run's reservation on the tenant's budgets becomes its real usage once the end is
    # committed (the reaper settles it if this process dies first).
    tx.after_commit.append(
        partial(runtime.quotas.settle, run.tenant_id, run.run_id, totals.tokens, totals.cost_usd)
    )
    emit(
        f"run.{end.status.value}",
        status=end.status.value,
        output=end.output,
        error=end.error,
        usage=totals.usage,
        note=end.note,
    )


def _json(runtime: Runtime, value: dict[str, Any]) -> Any:
    """A JSON value inside an expression: PostgreSQL needs the cast to type the CASE; SQLite
    has no JSON type to cast to (its CAST would make a number of it)."""
    if runtime.db.is_postgres:
        return cast(value, JSON)
    return type_coerce(value, JSON)


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
    end = RunEnd(RunStatus.COMPLETED, output=output)
    context_tokens = (
        select(OrchestrationContext.tokens_used)
        .where(OrchestrationContext.run_id == call.run_id)
        .scalar_subquery()
    )
    tokens_in, tokens_out, cost, orchestrator_tokens = session.execute(
        _calls_totals(call.run_id).add_columns(context_tokens)
    ).one()
    totals = Totals(int(tokens_in), int(tokens_out), float(cost), int(orchestrator_tokens or 0))
    # The guard and the run's end in one statement.
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
        .values(version=Run.version + 1, **_end_values(end, totals, now))
        .returning(Run.thread_id, Run.guards, Run.pattern, Run.created_at)
    ).first()
    if row is None:
        return None
    thread_id, guards, pattern, created_at = row
    # The decisions still open get their outcome (one statement): the plan this call
    # executed counts it. An open outcome is SQL NULL or JSON null, as it was written.
    counted = DecisionOutcome(status=end.status.value, agent_calls=1).as_dict()
    uncounted = DecisionOutcome(status=end.status.value, agent_calls=0).as_dict()
    outcome = OrchestrationDecision.actual_outcome
    session.execute(
        update(OrchestrationDecision)
        .where(
            OrchestrationDecision.run_id == call.run_id,
            or_(outcome.is_(None), cast(outcome, String) == "null"),
        )
        .values(
            actual_outcome=case(
                (OrchestrationDecision.seq == call.decision_seq, _json(runtime, counted)),
                else_=_json(runtime, uncounted),
            )
        )
    )
    session.execute(
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
    )
    events: list[tuple[str, dict[str, Any]]] = []
    _hand_on(
        runtime,
        tx,
        RunRef(call.run_id, call.tenant_id, thread_id),
        end,
        totals,
        lambda type_, **data: events.append((type_, data)),
    )
    return EndedByCall(
        status=end.status,
        pattern=str(pattern or ""),
        duration_s=max(0.0, (now - created_at).total_seconds()),
        events=events,
    )
