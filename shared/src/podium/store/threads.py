"""Appending to a thread's event log, used by the gateway and the agent workers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from podium.store.models import Thread, ThreadEvent


def next_seq(session: Session, thread_id: str) -> int:
    """Reserve the next event seq of a thread. The UPDATE row-locks the thread until commit,
    so concurrent appends to one thread get consecutive, unique seqs on every backend."""
    seq = session.execute(
        update(Thread)
        .where(Thread.id == thread_id)
        .values(event_count=Thread.event_count + 1)
        .returning(Thread.event_count)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if seq is None:
        raise LookupError(f"thread {thread_id} does not exist")
    return int(seq)


def append_event(
    session: Session,
    *,
    tenant_id: str,
    thread_id: str,
    kind: str,
    role: str,
    content: str,
    agent: str | None = None,
    run_id: str | None = None,
    call_id: str | None = None,
    data: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
) -> ThreadEvent:
    event = ThreadEvent(
        tenant_id=tenant_id,
        thread_id=thread_id,
        seq=next_seq(session, thread_id),
        kind=kind,
        role=role,
        agent=agent,
        content=content,
        run_id=run_id,
        call_id=call_id,
        data=data or {},
        dedupe_key=dedupe_key,
    )
    session.add(event)
    return event
