"""Reads and guarded writes of a run's row that several transitions share."""

from __future__ import annotations

from sqlalchemy import select, true, update
from sqlalchemy.orm import Session

from podium.store import (
    TERMINAL_RUN_STATUSES,
    CallStatus,
    Run,
    Thread,
)

TERMINAL = [s.value for s in TERMINAL_RUN_STATUSES]
OPEN_CALLS = [CallStatus.PENDING.value, CallStatus.RUNNING.value]


def thread_and_unfinished(session: Session, thread_id: str) -> tuple[bool, tuple[str, str] | None]:
    """Whether the thread exists (in the session's tenant), and its oldest unfinished run:
    (id, status); one query."""
    oldest = (
        select(Run.id, Run.status)
        .where(Run.thread_id == thread_id, Run.status.not_in(TERMINAL))
        .order_by(Run.created_at, Run.id)
        .limit(1)
        .subquery()
    )
    row = session.execute(
        select(Thread.id, oldest.c.id, oldest.c.status)
        .select_from(Thread)
        .outerjoin(oldest, true())
        .where(Thread.id == thread_id)
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
