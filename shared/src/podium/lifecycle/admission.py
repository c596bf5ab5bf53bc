"""Transitions that start, answer, stop or resume a run: admit (with the answer to a waiting
run and the interrupt of a busy thread), cancel and resume. Each is one short transaction
that stages its AdvanceRun in the outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Select, and_, bindparam, exists, insert, literal_column, select, update

from podium.lifecycle import sql
from podium.lifecycle.errors import Conflict, NotFound
from podium.lifecycle.run_state import TERMINAL, request_cancel, thread_and_unfinished
from podium.lifecycle.threads import append_event
from podium.lifecycle.tx import owned_transaction
from podium.messages import AdvanceRun
from podium.outbox import stage
from podium.runtime import Runtime, Tx
from podium.store import (
    EventKind,
    OrchestrationContext,
    OutboxMessage,
    Run,
    RunStatus,
    Thread,
    ThreadEvent,
    new_id,
    utcnow,
)
from podium.store.guards import owner_writes

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


def _run_row(
    request: RunRequest, run_id: str, tenant_id: str, thread_id: str, now: datetime
) -> dict[str, Any]:
    """A new queued run's row, but its ``input_event_seq`` (the seq its prompt gets)."""
    return {
        "id": run_id,
        "tenant_id": tenant_id,
        "thread_id": thread_id,
        "status": RunStatus.QUEUED.value,
        "input": request.input,
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
    }


def _context_row(run_id: str, tenant_id: str, token_budget: int, now: datetime) -> dict[str, Any]:
    return {
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
    }


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
    if runtime.db.is_postgres:
        admitted = _admit_in_one_statement(
            runtime, tenant_id, thread_id, request, run_id, token_budget
        )
        if admitted is not None:
            return admitted
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
        run_row = _run_row(request, run_id, tenant_id, thread_id, now)
        sql.run(session, _INSERT_RUN, {**run_row, "input_event_seq": seq})
        sql.run(session, _INSERT_CONTEXT, _context_row(run_id, tenant_id, token_budget, now))
        interrupted = None
        interrupt = active is not None and request.multitask == "interrupt"
        if active is not None and interrupt and request_cancel(session, tenant_id, active[0]):
            tx.send(AdvanceRun(run_id=active[0], reason="run.cancel"))
            interrupted = active[0]
        tx.send(AdvanceRun(run_id=run_id, reason="run.created"))
        return Admitted(run_id, RunStatus.QUEUED.value, thread_id, interrupted_run_id=interrupted)


# --- admission in one statement (PostgreSQL) --------------------------------------------------
#
# The common admission, a thread with no unfinished run in the way, as one statement in its
# own transaction: one round trip instead of BEGIN, six statements and COMMIT. Its writes are
# data-modifying CTEs that all hang on the thread's seq reservation (``seq``): when the thread
# is missing, or its unfinished run needs more than a queued run behind it (an answer, a
# refusal, an interrupt), that UPDATE matches nothing, nothing is written, and the caller
# takes the general transaction above, which decides those cases. Like that transaction, the
# statement sees the unfinished run as of its start and then row-locks the thread.

_threads = sql.table(Thread)
_runs = sql.table(Run)
_events = sql.table(ThreadEvent)
_contexts = sql.table(OrchestrationContext)
_outbox = sql.table(OutboxMessage)


_EVENT_COLUMNS = ("id", "kind", "role", "content", "data", "tenant_id", "thread_id", "run_id")
_OUTBOX_COLUMNS = ("id", "task", "queue", "payload", "attempts")


def _param(name: str, column: Any) -> Any:
    return bindparam(f"p_{name}", type_=column.type)


@cache
def _one_statement_admission(
    run_columns: tuple[str, ...], context_columns: tuple[str, ...]
) -> Select[Any]:
    """The statement for rows of these columns (those of ``_run_row`` and ``_context_row``:
    built once)."""
    thread_id, tenant_id = (
        _param("thread_id", _runs.c.thread_id),
        _param("tenant_id", _runs.c.tenant_id),
    )
    now = _param("now", _runs.c.created_at)
    busy = (
        select(_runs.c.id, _runs.c.status)
        .where(
            _runs.c.thread_id == thread_id,
            _runs.c.tenant_id == tenant_id,
            # Inline constants: an expanding IN parameter is re-rendered at every execution.
            _runs.c.status.not_in([literal_column(f"'{status}'") for status in TERMINAL]),
        )
        .order_by(_runs.c.created_at, _runs.c.id)
        .limit(1)
        .cte("busy")
    )
    # Queued behind an unfinished run is what ``enqueue`` asks for, unless that run awaits
    # the user (then this input is its answer).
    in_the_way = ~and_(
        _param("multitask", _runs.c.multitask) == "enqueue",
        busy.c.status != RunStatus.AWAITING_INPUT.value,
    )
    seq = (
        update(_threads)
        .where(
            _threads.c.id == _param("thread_id", _threads.c.id),
            _threads.c.tenant_id == _param("tenant_id", _threads.c.tenant_id),
            ~exists(select(busy.c.id).where(in_the_way)),
        )
        # Column onupdate defaults are not applied inside a CTE: updated_at is set here.
        .values(event_count=_threads.c.event_count + 1, updated_at=now)
        .returning(_threads.c.event_count.label("seq"))
        .cte("seq")
    )

    def insert_from_seq(table: Any, columns: tuple[str, ...], **from_seq: Any) -> Any:
        """INSERT … SELECT of one row, its ``columns`` bound as ``p_<table>_<column>``, FROM
        ``seq``: no seq reserved, no row."""
        values = {c: bindparam(f"p_{table.name}_{c}", type_=table.c[c].type) for c in columns}
        values.update(from_seq)
        row = select(*(v.label(c) for c, v in values.items())).select_from(seq)
        return insert(table).from_select(list(values), row).cte(f"new_{table.name}")

    event = insert_from_seq(_events, _EVENT_COLUMNS, seq=seq.c.seq, created_at=now)
    run = insert_from_seq(_runs, run_columns, input_event_seq=seq.c.seq)
    context = insert_from_seq(_contexts, context_columns)
    outbox = insert_from_seq(_outbox, _OUTBOX_COLUMNS, created_at=now)
    found = exists(
        select(_threads.c.id).where(
            _threads.c.id == _param("thread_id", _threads.c.id),
            _threads.c.tenant_id == _param("tenant_id", _threads.c.tenant_id),
        )
    )
    # Data-modifying CTEs run whether or not the query reads them; add_cte renders them.
    return select(found.label("found"), select(seq.c.seq).scalar_subquery().label("seq")).add_cte(
        event, run, context, outbox
    )


def _admit_in_one_statement(
    runtime: Runtime,
    tenant_id: str,
    thread_id: str,
    request: RunRequest,
    run_id: str,
    token_budget: int,
) -> Admitted | None:
    """The admission as one statement and transaction; None when the thread's unfinished run
    needs the general transaction."""
    message = stage(AdvanceRun(run_id=run_id, reason="run.created"), AdvanceRun.QUEUE or "")
    now = utcnow()
    run_row = _run_row(request, run_id, tenant_id, thread_id, now)
    context_row = _context_row(run_id, tenant_id, token_budget, now)
    event_row = {
        "id": new_id(),
        "kind": EventKind.USER_MESSAGE.value,
        "role": "user",
        "content": request.input,
        "data": {},
        "tenant_id": tenant_id,
        "thread_id": thread_id,
        "run_id": run_id,
    }
    outbox_row = {
        "id": message.id,
        "task": message.task,
        "queue": message.queue,
        "payload": message.payload,
        "attempts": 0,
    }
    params: dict[str, Any] = {
        "p_thread_id": thread_id,
        "p_tenant_id": tenant_id,
        "p_now": now,
        "p_multitask": request.multitask,
    }
    for table, row in (
        (_runs, run_row),
        (_contexts, context_row),
        (_events, event_row),
        (_outbox, outbox_row),
    ):
        params.update({f"p_{table.name}_{column}": value for column, value in row.items()})
    statement = _one_statement_admission(tuple(run_row), tuple(context_row))
    with owner_writes(), runtime.db.engine.connect() as connection:
        found, seq = (
            connection.execution_options(isolation_level="AUTOCOMMIT")
            .execute(statement, params)
            .one()
        )
    if not found:
        raise NotFound("thread", thread_id)
    if seq is None:
        return None
    runtime.relay.publish([message])
    return Admitted(run_id, RunStatus.QUEUED.value, thread_id)


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
