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
from functools import cache, partial
from typing import Any

from sqlalchemy import (
    JSON,
    String,
    Update,
    bindparam,
    case,
    cast,
    exists,
    func,
    or_,
    select,
    type_coerce,
    update,
)

from podium.decisions import DecisionOutcome
from podium.lifecycle import sql
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


_calls = sql.table(AgentCall)
_runs = sql.table(Run)
_threads = sql.table(Thread)
_contexts = sql.table(OrchestrationContext)
_decisions = sql.table(OrchestrationDecision)

# The run's calls' tokens and cost, summed; with its Orchestrator agent's tokens.
_CALLS_TOTALS = select(
    func.coalesce(func.sum(_calls.c.input_tokens), 0),
    func.coalesce(func.sum(_calls.c.output_tokens), 0),
    func.coalesce(func.sum(_calls.c.cost_usd), 0.0),
).where(_calls.c.run_id == bindparam("p_run_id"))
_TOTALS_AND_CONTEXT = _CALLS_TOTALS.add_columns(
    select(_contexts.c.tokens_used)
    .where(_contexts.c.run_id == bindparam("p_run_id"))
    .scalar_subquery()
)

# The thread is let go (if this run held it) and its next queued run found, in one statement.
_RELEASE_THREAD = (
    update(_threads)
    .where(_threads.c.id == bindparam("p_thread_id"))
    .values(
        active_run_id=case(
            (_threads.c.active_run_id == bindparam("p_run_id"), None),
            else_=_threads.c.active_run_id,
        )
    )
    .returning(
        select(_runs.c.id)
        .where(
            _runs.c.thread_id == bindparam("p_thread_id"),
            _runs.c.status == RunStatus.QUEUED.value,
            _runs.c.id != bindparam("p_run_id"),
        )
        .order_by(_runs.c.created_at, _runs.c.id)
        .limit(1)
        .scalar_subquery()
    )
)

# A run ended by its call: the guard and the end in one statement.
_END_BY_CALL = (
    update(_runs)
    .where(
        _runs.c.id == bindparam("p_run_id"),
        _runs.c.status == RunStatus.RUNNING.value,
        _runs.c.cancel_requested.is_(False),
        or_(_runs.c.deadline_at.is_(None), _runs.c.deadline_at > bindparam("p_now")),
        ~exists().where(_calls.c.run_id == _runs.c.id, _calls.c.status.in_(OPEN_CALLS)),
    )
    .values(
        version=_runs.c.version + 1,
        **{
            key: bindparam(f"p_{key}", type_=_runs.c[key].type)
            for key in ("status", "error", "finished_at", "step", "cost_usd", "usage", "output")
        },
    )
    .returning(_runs.c.thread_id, _runs.c.guards, _runs.c.pattern, _runs.c.created_at)
)

_SET_CONTEXT_OUTCOME = (
    update(_contexts)
    .where(_contexts.c.run_id == bindparam("p_run_id"))
    .values(
        outcome=bindparam("p_outcome", type_=_contexts.c.outcome.type),
        updated_at=bindparam("p_now", type_=_contexts.c.updated_at.type),
    )
)


@cache
def _decision_outcomes(postgres: bool) -> Update:
    """The run's decisions still open get their outcome: the plan the call executed counts it.
    An open outcome is SQL NULL or JSON null, as it was written. A JSON value inside the CASE:
    PostgreSQL needs the cast to type it; SQLite has no JSON type to cast to (its CAST would
    make a number of it)."""
    outcome = _decisions.c.actual_outcome

    def json_param(name: str) -> Any:
        param = bindparam(name, type_=JSON)
        return cast(param, JSON) if postgres else type_coerce(param, JSON)

    return (
        update(_decisions)
        .where(
            _decisions.c.run_id == bindparam("p_run_id"),
            or_(outcome.is_(None), cast(outcome, String) == "null"),
        )
        .values(
            actual_outcome=case(
                (_decisions.c.seq == bindparam("p_seq"), json_param("p_counted")),
                else_=json_param("p_uncounted"),
            )
        )
    )


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
    session = tx.connection
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
    tokens_in, tokens_out, cost = session.execute(_CALLS_TOTALS, {"p_run_id": run.run_id}).one()
    totals = Totals(int(tokens_in), int(tokens_out), float(cost), int(orchestrator_tokens or 0))
    session.execute(update(Run).where(Run.id == run.run_id).values(**_end_values(end, totals, now)))
    _hand_on(runtime, tx, run, end, totals, emit)


def _hand_on(
    runtime: Runtime, tx: Tx, run: RunRef, end: RunEnd, totals: Totals, emit: Emit
) -> None:
    """After the run's row ended: its thread to the next queued run, the learner told, the
    tenant's reservation settled after the commit, the end event."""
    next_run = tx.connection.execute(
        _RELEASE_THREAD, {"p_thread_id": run.thread_id, "p_run_id": run.run_id}
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
    session = tx.connection
    now = utcnow()
    end = RunEnd(RunStatus.COMPLETED, output=output)
    tokens_in, tokens_out, cost, orchestrator_tokens = session.execute(
        _TOTALS_AND_CONTEXT, {"p_run_id": call.run_id}
    ).one()
    totals = Totals(int(tokens_in), int(tokens_out), float(cost), int(orchestrator_tokens or 0))
    values = _end_values(end, totals, now)
    row = session.execute(
        _END_BY_CALL,
        {"p_run_id": call.run_id, "p_now": now, **{f"p_{k}": v for k, v in values.items()}},
    ).first()
    if row is None:
        return None
    thread_id, guards, pattern, created_at = row
    session.execute(
        _decision_outcomes(runtime.db.is_postgres),
        {
            "p_run_id": call.run_id,
            "p_seq": call.decision_seq,
            "p_counted": DecisionOutcome(status=end.status.value, agent_calls=1).as_dict(),
            "p_uncounted": DecisionOutcome(status=end.status.value, agent_calls=0).as_dict(),
        },
    )
    session.execute(
        _SET_CONTEXT_OUTCOME,
        {
            "p_run_id": call.run_id,
            "p_now": now,
            "p_outcome": {
                "status": end.status.value,
                "error": None,
                "note": None,
                "guards": list(guards or []),
            },
        },
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
