"""Threads and their append-only event logs. Every append goes through ``append_event``,
inside a lifecycle transition."""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Update, bindparam, insert, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from podium.lifecycle import sql
from podium.lifecycle.tx import owned_transaction
from podium.runtime import Runtime
from podium.store.models import Thread, ThreadEvent, new_id, utcnow

_threads = sql.table(Thread)
_INSERT_EVENT = insert(sql.table(ThreadEvent))


@cache
def _next_seq_statement(keys: frozenset[str]) -> Update:
    """The seq-reserving UPDATE that also sets the thread columns ``keys`` (one per set)."""
    return (
        update(_threads)
        .where(_threads.c.id == bindparam("p_thread_id"))
        .values(
            event_count=_threads.c.event_count + 1,
            **{key: bindparam(f"p_{key}", type_=_threads.c[key].type) for key in sorted(keys)},
        )
        .returning(_threads.c.event_count)
    )


def next_seq(
    session: Session | Connection, thread_id: str, thread_values: dict[str, Any] | None = None
) -> int:
    """Reserve the next event seq of a thread (and set ``thread_values`` on it, in the same
    statement). The UPDATE row-locks the thread until commit, so concurrent appends to one
    thread get consecutive, unique seqs on every backend."""
    values = thread_values or {}
    params = {f"p_{key}": value for key, value in values.items()}
    params["p_thread_id"] = thread_id
    seq = sql.run(session, _next_seq_statement(frozenset(values)), params).scalar_one_or_none()
    if seq is None:
        raise LookupError(f"thread {thread_id} does not exist")
    return int(seq)


def append_event(
    session: Session | Connection,
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
    event_id: str | None = None,
    thread_values: dict[str, Any] | None = None,
) -> tuple[str, int]:
    """Append one event (``event_id``: chosen by the caller, who wrote it elsewhere in the
    same transaction; ``thread_values``: set on the thread with the seq); returns its id and
    seq."""
    event_id, seq = event_id or new_id(), next_seq(session, thread_id, thread_values)
    sql.run(
        session,
        _INSERT_EVENT,
        {
            "id": event_id,
            "tenant_id": tenant_id,
            "thread_id": thread_id,
            "seq": seq,
            "kind": str(kind),
            "role": role,
            "agent": agent,
            "content": content,
            "run_id": run_id,
            "call_id": call_id,
            "data": data or {},
            "dedupe_key": dedupe_key,
            "created_at": utcnow(),
        },
    )
    return event_id, seq


def create_thread(
    runtime: Runtime,
    tenant_id: str,
    *,
    title: str | None,
    metadata: dict[str, Any],
    parent_thread_id: str | None = None,
) -> Thread:
    """A new, empty thread of ``tenant_id`` (returned detached)."""
    with owned_transaction(runtime, tenant_id) as tx:
        thread = Thread(
            tenant_id=tenant_id, title=title, meta=metadata, parent_thread_id=parent_thread_id
        )
        tx.session.add(thread)
        tx.session.flush()
        tx.session.expunge(thread)
        return thread


def open_sub_thread(
    session: Session | Connection,
    *,
    tenant_id: str,
    thread_id: str,
    parent_thread_id: str,
    title: str,
) -> None:
    now = utcnow()
    session.execute(
        insert(Thread).values(
            id=thread_id,
            tenant_id=tenant_id,
            title=title[:500],
            meta={},
            event_count=0,
            parent_thread_id=parent_thread_id,
            created_at=now,
            updated_at=now,
        )
    )
