"""Transitions that start, answer, stop or resume a run: admit (with the answer to a waiting
run and the interrupt of a busy thread), cancel and resume. Each is one short transaction
that stages its AdvanceRun in the outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update

from podium.lifecycle import sql
from podium.lifecycle.errors import Conflict, NotFound
from podium.lifecycle.run_state import TERMINAL, request_cancel, thread_and_unfinished
from podium.lifecycle.threads import append_event
from podium.lifecycle.tx import owned_transaction
from podium.messages import AdvanceRun
from podium.runtime import Runtime, Tx
from podium.store import (
    EventKind,
    OrchestrationContext,
    Run,
    RunStatus,
    new_id,
    utcnow,
)

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


_INSERT_RUN = insert(sql.table(Run))
_INSERT_CONTEXT = insert(sql.table(OrchestrationContext))


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
        session = tx.connection
        found, active = thread_and_unfinished(session, tenant_id, thread_id)
        if not found:
            raise NotFound("thread", thread_id)
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
        sql.run(
            session,
            _INSERT_RUN,
            {
                "id": run_id,
                "tenant_id": tenant_id,
                "thread_id": thread_id,
                "status": RunStatus.QUEUED.value,
                "input": request.input,
                "input_event_seq": seq,
                "requested_agent": request.agent,
                "requested_pattern": request.pattern,
                "multitask": request.multitask,
                "idempotency_key": request.idempotency_key,
                "request_hash": request.request_hash,
                "deadline_at": request.deadline_at,
                "limits": request.limits,
                "usage": {},
                "guards": [],
                "cost_usd": 0.0,
                "cancel_requested": False,
                "version": 1,
                "created_at": now,
            },
        )
        sql.run(
            session,
            _INSERT_CONTEXT,
            {
                "id": new_id(),
                "tenant_id": tenant_id,
                "run_id": run_id,
                "cursor_seq": 0,
                "token_budget": token_budget,
                "tokens_used": 0,
                "summarized_through_seq": 0,
                "has_feedback": False,
                "archived": False,
                "created_at": now,
                "updated_at": now,
            },
        )
        interrupted = None
        interrupt = active is not None and request.multitask == "interrupt"
        if active is not None and interrupt and request_cancel(session, tenant_id, active[0]):
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
        if request_cancel(tx.connection, tenant_id, run_id):
            tx.send(AdvanceRun(run_id=run_id, reason="run.cancel"))
        row = tx.session.execute(select(Run.status).where(Run.id == run_id)).first()
        if row is None:
            raise NotFound("run", run_id)
        if row[0] in TERMINAL:
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
