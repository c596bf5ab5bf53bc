"""Applying an orchestrator step: the plan a step made on a snapshot is written in one short
transaction, only if the run is still at the snapshot's version (else nothing is written and
the step plans again)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Update, bindparam, insert, select, update
from sqlalchemy.engine import Connection

from podium.decisions import Decision, DecisionOutcome
from podium.lifecycle import sql
from podium.lifecycle.finish import RunRef, finish
from podium.lifecycle.plan import NewCall, StepPlan
from podium.lifecycle.run_state import TERMINAL
from podium.lifecycle.threads import append_event, open_sub_thread
from podium.lifecycle.tx import owned_transaction
from podium.messages import SubmitAgentCall
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
    new_id,
    utcnow,
)

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


_runs = sql.table(Run)
_threads = sql.table(Thread)
_contexts = sql.table(OrchestrationContext)
_INSERT_DECISIONS = insert(sql.table(OrchestrationDecision))
_INSERT_CALLS = insert(sql.table(AgentCall))


@cache
def _step_statement(keys: frozenset[str]) -> Update:
    """The run moves to its next version, setting ``keys``, if it is still at the version the
    step planned on (one statement per set of keys, built once)."""
    return (
        update(_runs)
        .where(
            _runs.c.id == bindparam("p_run_id"),
            _runs.c.version == bindparam("p_seen_version"),
            _runs.c.status.not_in(TERMINAL),
        )
        .values({key: bindparam(f"p_{key}", type_=_runs.c[key].type) for key in sorted(keys)})
        .returning(_runs.c.guards, _runs.c.awaiting, _runs.c.created_at)
    )


_TAKE_THREAD = (
    update(_threads)
    .where(
        _threads.c.id == bindparam("p_thread_id"),
        (_threads.c.active_run_id.is_(None)) | (_threads.c.active_run_id == bindparam("p_run_id")),
    )
    .values(active_run_id=bindparam("p_run_id"))
    .returning(_threads.c.event_count)
)


@cache
def _context_statement(keys: frozenset[str]) -> Update:
    """The step's change to its context (``tokens_used``: tokens added), returning the
    Orchestrator agent's tokens so far."""
    values: dict[str, Any] = {
        key: bindparam(f"p_{key}", type_=_contexts.c[key].type) for key in sorted(keys)
    }
    if "tokens_used" in keys:
        values["tokens_used"] = _contexts.c.tokens_used + values["tokens_used"]
    return (
        update(_contexts)
        .where(_contexts.c.id == bindparam("p_context_id"))
        .values(values)
        .returning(_contexts.c.tokens_used)
    )


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
    # Core statements on the connection: no ORM bookkeeping on the hot path.
    session = tx.connection
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
        _step_statement(frozenset(values)),
        {
            **{f"p_{key}": value for key, value in values.items()},
            "p_run_id": plan.run_id,
            "p_seen_version": plan.version,
        },
    ).first()
    if current is None:
        raise _Abort("stale")
    guards, awaiting, created_at = list(current[0] or []), dict(current[1] or {}), current[2]
    # Events in the run's thread so far, known without a read when the thread was just taken.
    thread_events: int | None = None
    if plan.start:
        thread_events = _take_thread(session, plan)
        if thread_events is None:
            raise _Abort("thread_busy")
    guards = [*guards, *plan.guards]
    if plan.guards or plan.answer is not None:
        if plan.answer is not None:
            awaiting["answer"] = plan.answer
        session.execute(
            update(Run)
            .where(Run.id == plan.run_id)
            .values(guards=guards, awaiting=awaiting or None)
        )
    context_id = plan.context_id
    record_decisions(session, plan, context_id, plan.decisions)
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
    _insert_calls(tx, plan, None if plan.messages else thread_events)
    cursor = plan.context.cursor_seq
    if plan.question is not None:
        cursor = _ask(session, plan, awaiting)
    run_outcome: dict[str, Any] | None = None
    if plan.end is not None:
        end = plan.end
        run_outcome = {"status": end.status.value, "error": end.error, "note": end.note}
        run_outcome["guards"] = guards
    tokens_used = _update_context(session, plan, context_id, cursor, run_outcome)
    finished, duration = None, None
    if plan.end is not None:
        run = RunRef(plan.run_id, plan.tenant_id, plan.thread_id)
        finish(runtime, tx, run, plan.end, tokens_used, plan.emit)
        finished = plan.end.status
        duration = (utcnow() - created_at).total_seconds()
    return StepApplied(True, finished=finished, duration_s=duration)


def _take_thread(session: Connection, plan: StepPlan) -> int | None:
    """Runs of one thread execute one at a time, oldest first (the snapshot saw this run
    first in line; taking the thread is what guards it). The thread's event count, or None
    if another run holds it."""
    taken = session.execute(
        _TAKE_THREAD, {"p_thread_id": plan.thread_id, "p_run_id": plan.run_id}
    ).first()
    return None if taken is None else int(taken[0])


def record_decisions(
    session: Connection, plan: StepPlan, context_id: str, decisions: list[Decision]
) -> None:
    if not decisions:
        return
    now = utcnow()
    session.execute(
        _INSERT_DECISIONS,
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


def _set_outcome(session: Connection, context_id: str, seq: int, outcome: DecisionOutcome) -> None:
    session.execute(
        update(OrchestrationDecision)
        .where(OrchestrationDecision.context_id == context_id, OrchestrationDecision.seq == seq)
        .values(actual_outcome=outcome.as_dict())
    )


def _insert_calls(tx: Tx, plan: StepPlan, thread_events: int | None) -> None:
    """The plan's new calls, each seeing its thread as it stands (``thread_events``: the
    run's thread's event count, when the caller knows it)."""
    if not plan.calls:
        return
    # Core statements on the connection: no ORM bookkeeping on the hot path.
    session = tx.connection
    until: dict[str, int] = {} if thread_events is None else {plan.thread_id: thread_events}
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
    session.execute(_INSERT_CALLS, rows)
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
        "ends_run": call.ends_run,
        "attempts": 0,
        "cost_usd": 0.0,
        "tool_steps": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "created_at": utcnow(),
    }


def _ask(session: Connection, plan: StepPlan, awaiting: dict[str, Any]) -> int:
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
    )
    return seq


def _update_context(
    session: Connection,
    plan: StepPlan,
    context_id: str,
    cursor: int | None,
    outcome: dict[str, Any] | None,
) -> int | None:
    """Apply the step's change to the context; with the run's outcome at its end, returning
    the Orchestrator agent's tokens of the whole run."""
    change = plan.context
    values: dict[str, Any] = {}
    if outcome is not None:
        values["outcome"] = outcome
    if cursor is not None:
        values["cursor_seq"] = cursor
    if change.tokens_added:
        values["tokens_used"] = change.tokens_added
    if change.summarized_through_seq is not None:
        values["summary"] = change.summary
        values["summarized_through_seq"] = change.summarized_through_seq
    if not values:
        return None
    values["updated_at"] = utcnow()
    tokens: int | None = session.scalar(
        _context_statement(frozenset(values)),
        {**{f"p_{key}": value for key, value in values.items()}, "p_context_id": context_id},
    )
    return tokens
