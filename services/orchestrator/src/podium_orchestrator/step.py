"""``advance(run_id)``: the orchestrator's step function (DESIGN §2).

A step loads the run, looks at what changed, asks the active pattern for the next actions,
persists them with the messages they cause (outbox, same transaction), and returns. It never
waits for an agent call. It is idempotent (state-based, not message-based) and safe when two
calls of one run finish at once: the run row is locked on PostgreSQL and version-checked on
every backend, and a step that loses the race is simply redone on fresh state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from podium.messages import AdvanceRun, ExecuteAgentCall, RunCompleted
from podium.metrics import DECISIONS, RUN_DURATION, RUNS_FINISHED
from podium.queues import agents_queue
from podium.runtime import Runtime, Tx
from podium.store import (
    TERMINAL_RUN_STATUSES,
    Agent,
    AgentCall,
    CallStatus,
    OrchestrationContext,
    OrchestrationDecision,
    Run,
    RunStatus,
    Thread,
    utcnow,
)
from podium_orchestrator.decision import decide_first
from podium_orchestrator.patterns import PATTERNS, Complete, Dispatch, Fail, RunView, Wait

log = logging.getLogger(__name__)

MAX_STEP_RETRIES = 8


@dataclass
class StepResult:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    finished: str | None = None
    pattern: str | None = None
    duration_s: float | None = None

    def emit(self, type_: str, **data: Any) -> None:
        self.events.append((type_, data))


def advance(runtime: Runtime, message: AdvanceRun) -> StepResult:
    for _ in range(MAX_STEP_RETRIES):
        try:
            with runtime.transaction() as tx:
                result = _step(runtime, tx, message.run_id)
        except StaleDataError:
            log.info("run %s changed under this step; redoing it", message.run_id)
            continue
        _after_commit(runtime, message.run_id, result)
        return result
    raise RuntimeError(f"run {message.run_id}: step lost {MAX_STEP_RETRIES} races in a row")


def _after_commit(runtime: Runtime, run_id: str, result: StepResult) -> None:
    for type_, data in result.events:
        try:
            runtime.events.publish(run_id, type_, {"run_id": run_id, **data})
        except Exception as exc:  # the store is the truth; the stream is a view
            log.warning("event publish failed for run %s: %s", run_id, exc)
    if result.finished:
        pattern = result.pattern or "none"
        RUNS_FINISHED.labels(result.finished, pattern).inc()
        if result.duration_s is not None:
            RUN_DURATION.labels(pattern).observe(result.duration_s)


def _load_run(runtime: Runtime, session: Session, run_id: str) -> Run | None:
    query = select(Run).where(Run.id == run_id)
    if runtime.db.is_postgres:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def _step(runtime: Runtime, tx: Tx, run_id: str) -> StepResult:
    session = tx.session
    result = StepResult()
    run = _load_run(runtime, session, run_id)
    if run is None:
        log.warning("advance: run %s does not exist; ignoring", run_id)
        return result
    if run.status in TERMINAL_RUN_STATUSES:
        return result
    context = session.scalars(
        select(OrchestrationContext).where(OrchestrationContext.run_id == run.id)
    ).one()
    if run.cancel_requested:
        _cancel_calls(session, run)
        _finish(tx, run, context, result, RunStatus.CANCELLED, error=None)
        return result
    if run.status == RunStatus.QUEUED:
        if not _claim_thread(session, run):
            return result  # another run owns the thread; it will hand over when it ends
        run.status = RunStatus.RUNNING
        run.started_at = utcnow()
        decision = decide_first(session, run, context)
        session.flush()
        run.pattern = decision.dimensions["pattern"]
        DECISIONS.labels(run.pattern, decision.source).inc()
        result.emit("run.started", thread_id=run.thread_id)
        result.emit(
            "decision",
            seq=decision.seq,
            dimensions=decision.dimensions,
            rationale=decision.rationale,
            source=decision.source,
            fallback=decision.fallback_reason,
        )
    decision = session.scalars(
        select(OrchestrationDecision)
        .where(OrchestrationDecision.context_id == context.id)
        .order_by(OrchestrationDecision.seq.desc())
        .limit(1)
    ).one()
    calls = list(
        session.scalars(
            select(AgentCall).where(AgentCall.run_id == run.id).order_by(AgentCall.created_at)
        )
    )
    pattern = PATTERNS[run.pattern or "direct"]
    parameters = dict(decision.dimensions.get("parameters", {}))
    view = RunView(
        run_id=run.id,
        input=run.input,
        agent=str(decision.dimensions["agent"]),
        parameters=parameters,
        calls=calls,
    )
    for action in pattern.next_actions(view):
        if isinstance(action, Dispatch):
            _dispatch(tx, run, decision, action, result)
        elif isinstance(action, Complete):
            run.output = action.output
            decision.actual_outcome = {"status": "completed", "agent_calls": len(calls)}
            _finish(tx, run, context, result, RunStatus.COMPLETED, error=None)
        elif isinstance(action, Fail):
            decision.actual_outcome = {"status": "failed", "error": action.code}
            _finish(
                tx,
                run,
                context,
                result,
                RunStatus.FAILED,
                error={"code": action.code, "message": action.message},
            )
        elif isinstance(action, Wait):
            pass
    return result


def _claim_thread(session: Session, run: Run) -> bool:
    """Runs of one thread execute one at a time, oldest first."""
    oldest = session.scalars(
        select(Run.id)
        .where(
            Run.thread_id == run.thread_id,
            Run.status.not_in([s.value for s in TERMINAL_RUN_STATUSES]),
        )
        .order_by(Run.created_at, Run.id)
        .limit(1)
    ).first()
    if oldest != run.id:
        return False
    claimed = session.execute(
        update(Thread)
        .where(
            Thread.id == run.thread_id,
            (Thread.active_run_id.is_(None)) | (Thread.active_run_id == run.id),
        )
        .values(active_run_id=run.id)
        .execution_options(synchronize_session=False)
    )
    return bool(claimed.rowcount)  # type: ignore[attr-defined]


def _dispatch(
    tx: Tx, run: Run, decision: OrchestrationDecision, action: Dispatch, result: StepResult
) -> None:
    parameters = dict(action.parameters)
    pool = str(parameters.pop("pool", None) or "default")
    call = AgentCall(
        tenant_id=run.tenant_id,
        run_id=run.id,
        thread_id=run.thread_id,
        decision_seq=decision.seq,
        agent=action.agent,
        pool=pool,
        status=CallStatus.PENDING,
        params={**parameters, "instructions": _instructions(tx.session, run, action.agent)},
        context_until_seq=run.input_event_seq,
    )
    tx.session.add(call)
    tx.session.flush()
    run.step = f"agent_call:{action.agent}"
    tx.send(ExecuteAgentCall(call_id=call.id, run_id=run.id), queue=agents_queue(pool))
    result.emit("agent_call.queued", call_id=call.id, agent=action.agent, pool=pool)


def _instructions(session: Session, run: Run, agent_name: str) -> str:
    instructions = session.scalars(
        select(Agent.instructions).where(Agent.tenant_id == run.tenant_id, Agent.name == agent_name)
    ).first()
    return instructions or ""


def _cancel_calls(session: Session, run: Run) -> None:
    session.execute(
        update(AgentCall)
        .where(
            AgentCall.run_id == run.id,
            AgentCall.status.in_([CallStatus.PENDING.value, CallStatus.RUNNING.value]),
        )
        .values(status=CallStatus.CANCELLED, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def _finish(
    tx: Tx,
    run: Run,
    context: OrchestrationContext,
    result: StepResult,
    status: RunStatus,
    *,
    error: dict[str, Any] | None,
) -> None:
    session = tx.session
    totals = session.execute(
        select(
            func.coalesce(func.sum(AgentCall.input_tokens), 0),
            func.coalesce(func.sum(AgentCall.output_tokens), 0),
        ).where(AgentCall.run_id == run.id)
    ).one()
    run.status = status
    run.error = error
    run.finished_at = utcnow()
    run.step = None
    run.usage = {"input_tokens": int(totals[0]), "output_tokens": int(totals[1])}
    context.outcome = {"status": status.value, "error": error}
    # Hand the thread to its next queued run, if any.
    session.execute(
        update(Thread)
        .where(Thread.id == run.thread_id, Thread.active_run_id == run.id)
        .values(active_run_id=None)
        .execution_options(synchronize_session=False)
    )
    next_run = session.scalars(
        select(Run.id)
        .where(
            Run.thread_id == run.thread_id,
            Run.status == RunStatus.QUEUED.value,
            Run.id != run.id,
        )
        .order_by(Run.created_at, Run.id)
        .limit(1)
    ).first()
    if next_run is not None:
        tx.send(AdvanceRun(run_id=next_run, reason="thread.released"))
    tx.send(RunCompleted(run_id=run.id, tenant_id=run.tenant_id, status=status.value))
    result.finished = status.value
    result.pattern = run.pattern
    started = run.created_at
    result.duration_s = (run.finished_at - started).total_seconds()
    result.emit(
        f"run.{status.value}",
        status=status.value,
        output=run.output,
        error=error,
        usage=run.usage,
    )
