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


def request_cancel(session: Session, run_id: str) -> bool:
    """Mark a run for cancellation; its next step ends it. Bumps the version, so a step that
    is deciding meanwhile finds its decision superseded."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.not_in(TERMINAL), Run.cancel_requested.is_(False))
        .values(cancel_requested=True, version=Run.version + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
