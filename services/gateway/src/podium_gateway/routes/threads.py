"""Threads and their messages, scoped to the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from podium.lifecycle import threads as thread_lifecycle
from podium.store import Thread, ThreadEvent, tenant_session
from podium_gateway.auth import RuntimeDep, TenantDep
from podium_gateway.errors import API_ERRORS, not_found
from podium_gateway.schemas import (
    MAX_SEQ,
    MessageOut,
    MessagePage,
    ThreadCreate,
    ThreadId,
    ThreadOut,
)

router = APIRouter(prefix="/v1/threads", tags=["threads"], responses=API_ERRORS)


def _thread_out(thread: Thread) -> ThreadOut:
    return ThreadOut(
        id=thread.id,
        title=thread.title,
        metadata=thread.meta,
        last_agent=thread.last_agent,
        active_run_id=thread.active_run_id,
        message_count=thread.event_count,
        created_at=thread.created_at,
    )


@router.post("", status_code=201, response_model=ThreadOut)
def create_thread(
    principal: TenantDep, runtime: RuntimeDep, body: ThreadCreate | None = None
) -> ThreadOut:
    body = body or ThreadCreate()
    thread = thread_lifecycle.create_thread(
        runtime, principal.tenant_id, title=body.title, metadata=body.metadata
    )
    return _thread_out(thread)


@router.get("/{thread_id}", response_model=ThreadOut)
def get_thread(thread_id: ThreadId, principal: TenantDep, runtime: RuntimeDep) -> ThreadOut:
    with tenant_session(runtime.db, principal.tenant_id) as session:
        thread = session.scalars(select(Thread).where(Thread.id == thread_id)).one_or_none()
        if thread is None:
            raise not_found("thread", thread_id)
        return _thread_out(thread)


@router.get("/{thread_id}/messages", response_model=MessagePage)
def list_messages(
    thread_id: ThreadId,
    principal: TenantDep,
    runtime: RuntimeDep,
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="Return events with seq greater than this.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> MessagePage:
    """The thread's event log, oldest first."""
    with tenant_session(runtime.db, principal.tenant_id) as session:
        if session.scalars(select(Thread.id).where(Thread.id == thread_id)).first() is None:
            raise not_found("thread", thread_id)
        rows = list(
            session.scalars(
                select(ThreadEvent)
                .where(ThreadEvent.thread_id == thread_id, ThreadEvent.seq > after)
                .order_by(ThreadEvent.seq)
                .limit(limit + 1)
            )
        )
    has_more = len(rows) > limit
    rows = rows[:limit]
    return MessagePage(
        data=[MessageOut.model_validate(r, from_attributes=True) for r in rows],
        has_more=has_more,
        next_after=rows[-1].seq if has_more else None,
    )
