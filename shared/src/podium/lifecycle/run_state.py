"""Reads and guarded writes of a run's row that several transitions share."""

from __future__ import annotations

from sqlalchemy import bindparam, select, true, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from podium.lifecycle import sql
from podium.store import (
    TERMINAL_RUN_STATUSES,
    CallStatus,
    Run,
    Thread,
)

TERMINAL = [s.value for s in TERMINAL_RUN_STATUSES]
OPEN_CALLS = [CallStatus.PENDING.value, CallStatus.RUNNING.value]


_runs = sql.table(Run)
_threads = sql.table(Thread)
_oldest = (
    select(_runs.c.id, _runs.c.status)
    .where(
        _runs.c.thread_id == bindparam("thread_id"),
        _runs.c.tenant_id == bindparam("tenant_id"),
        _runs.c.status.not_in(TERMINAL),
    )
    .order_by(_runs.c.created_at, _runs.c.id)
    .limit(1)
    .subquery()
)
_THREAD_AND_UNFINISHED = (
    select(_threads.c.id, _oldest.c.id, _oldest.c.status)
    .select_from(_threads)
    .outerjoin(_oldest, true())
    .where(_threads.c.id == bindparam("thread_id"), _threads.c.tenant_id == bindparam("tenant_id"))
)


def thread_and_unfinished(
    session: Session | Connection, tenant_id: str, thread_id: str
) -> tuple[bool, tuple[str, str] | None]:
    """Whether the thread exists (in ``tenant_id``), and its oldest unfinished run:
    (id, status); one query."""
    row = sql.run(
        session, _THREAD_AND_UNFINISHED, {"thread_id": thread_id, "tenant_id": tenant_id}
    ).first()
    if row is None:
        return False, None
    return True, ((row[1], row[2]) if row[1] is not None else None)


_REQUEST_CANCEL = (
    update(_runs)
    .where(
        _runs.c.id == bindparam("p_run_id"),
        _runs.c.tenant_id == bindparam("p_tenant_id"),
        _runs.c.status.not_in(TERMINAL),
        _runs.c.cancel_requested.is_(False),
    )
    .values(cancel_requested=True, version=_runs.c.version + 1)
)


def request_cancel(session: Session | Connection, tenant_id: str, run_id: str) -> bool:
    """Mark a run of ``tenant_id`` for cancellation; its next step ends it. Bumps the
    version, so a step that is deciding meanwhile finds its decision superseded."""
    params = {"p_run_id": run_id, "p_tenant_id": tenant_id}
    return bool(sql.run(session, _REQUEST_CANCEL, params).rowcount)
