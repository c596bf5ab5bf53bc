"""On PostgreSQL a run is admitted in one statement, its own transaction (one round trip),
unless the thread's unfinished run needs the general transaction: an answer, a refusal or an
interrupt. Driven in-process through the real lifecycle on a database of its own."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text

from podium.lifecycle import runs as run_lifecycle
from podium.lifecycle.admission import RunRequest
from podium.lifecycle.errors import Conflict, NotFound
from podium.lifecycle.threads import create_thread
from podium.runtime import Runtime
from podium.store import OrchestrationContext, OutboxMessage, Run, ThreadEvent, new_id, utcnow
from podium.store.provision import drop_database, ensure_database
from tests.conftest import PG_SERVER
from tests.support.inproc import make_runtime, make_tenant
from tests.support.services import ensure_postgres


@pytest.fixture
def pg_runtime(tmp_path: Path) -> Iterator[Runtime]:
    ensure_postgres()
    url = f"{PG_SERVER}/podium_admit_{uuid.uuid4().hex[:12]}"
    ensure_database(url)
    rt = make_runtime(tmp_path, mode="distributed", database_url=url)
    try:
        yield rt
    finally:
        rt.close()
        drop_database(url)


def _request(multitask: str = "reject", text_: str = "hello") -> RunRequest:
    return RunRequest(
        input=text_,
        agent=None,
        pattern="direct",
        multitask=multitask,
        idempotency_key=None,
        request_hash="h",
        deadline_at=utcnow() + timedelta(minutes=5),
        limits={"tokens": 100},
    )


def _admit(rt: Runtime, tenant: str, thread_id: str, multitask: str = "reject") -> Any:
    return run_lifecycle.admit(
        rt, tenant, thread_id, _request(multitask), run_id=new_id(), token_budget=50
    )


class _Statements:
    """The SQL statements this thread sends while counting (the outbox marker's batched
    UPDATE runs on its own thread, later)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt, self._thread = rt, threading.get_ident()
        self.sent: list[str] = []

    def _on(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.get_ident() == self._thread:
            self.sent.append(statement.split(None, 1)[0].upper())

    def __enter__(self) -> list[str]:
        event.listen(self.rt.db.engine, "before_cursor_execute", self._on)
        return self.sent

    def __exit__(self, *_: object) -> None:
        event.remove(self.rt.db.engine, "before_cursor_execute", self._on)


def _counts(rt: Runtime) -> tuple[int, ...]:
    with rt.db.read() as session:
        return tuple(
            int(session.scalar(select(func.count()).select_from(m)) or 0)
            for m in (Run, ThreadEvent, OrchestrationContext, OutboxMessage)
        )


def test_a_run_is_admitted_in_one_statement_with_its_event_context_and_outbox_row(
    pg_runtime: Runtime,
) -> None:
    tenant = make_tenant(pg_runtime)
    thread = create_thread(pg_runtime, tenant, title="t", metadata={})
    with _Statements(pg_runtime) as sent:
        admitted = _admit(pg_runtime, tenant, thread.id)
    assert sent == ["WITH"]
    assert admitted.created and admitted.status == "queued"
    with pg_runtime.db.read() as session:
        run = session.get(Run, admitted.run_id)
        assert run is not None and run.input_event_seq == 1 and run.limits == {"tokens": 100}
        seqs = session.scalars(select(ThreadEvent.seq).where(ThreadEvent.run_id == run.id)).all()
        assert list(seqs) == [1]
        context = session.scalars(
            select(OrchestrationContext).where(OrchestrationContext.run_id == run.id)
        ).one()
        assert context.token_budget == 50 and context.tenant_id == tenant
        payloads = session.scalars(select(OutboxMessage.payload)).all()
        assert [(p["run_id"], p["reason"]) for p in payloads] == [(run.id, "run.created")]


def test_another_tenants_thread_is_not_found_and_nothing_is_written(
    pg_runtime: Runtime,
) -> None:
    owner, other = make_tenant(pg_runtime), make_tenant(pg_runtime)
    thread = create_thread(pg_runtime, owner, title="t", metadata={})
    before = _counts(pg_runtime)
    with pytest.raises(NotFound):
        _admit(pg_runtime, other, thread.id)
    with pytest.raises(NotFound):
        _admit(pg_runtime, owner, new_id())
    assert _counts(pg_runtime) == before


def test_a_busy_thread_refuses_enqueues_or_interrupts_as_asked(pg_runtime: Runtime) -> None:
    tenant = make_tenant(pg_runtime)
    thread = create_thread(pg_runtime, tenant, title="t", metadata={})
    first = _admit(pg_runtime, tenant, thread.id)
    before = _counts(pg_runtime)
    with pytest.raises(Conflict):
        _admit(pg_runtime, tenant, thread.id, "reject")
    assert _counts(pg_runtime) == before
    with _Statements(pg_runtime) as sent:
        queued = _admit(pg_runtime, tenant, thread.id, "enqueue")
    assert sent == ["WITH"] and queued.created  # queued behind: still one statement
    interrupting = _admit(pg_runtime, tenant, thread.id, "interrupt")
    assert interrupting.created and interrupting.interrupted_run_id == first.run_id
    with pg_runtime.db.read() as session:
        assert session.get(Run, first.run_id).cancel_requested  # type: ignore[union-attr]
        seqs = session.scalars(
            select(Run.input_event_seq).where(Run.thread_id == thread.id).order_by(Run.created_at)
        ).all()
    assert list(seqs) == [1, 2, 3]


def test_input_to_a_run_awaiting_the_user_is_its_answer(pg_runtime: Runtime) -> None:
    tenant = make_tenant(pg_runtime)
    thread = create_thread(pg_runtime, tenant, title="t", metadata={})
    waiting = _admit(pg_runtime, tenant, thread.id)
    with pg_runtime.db.engine.begin() as connection:
        connection.execute(
            text("UPDATE runs SET status = 'awaiting_input' WHERE id = :id"), {"id": waiting.run_id}
        )
    runs_before = _counts(pg_runtime)[0]
    answered = _admit(pg_runtime, tenant, thread.id, "enqueue")
    assert (answered.created, answered.run_id) == (False, waiting.run_id)
    assert _counts(pg_runtime)[0] == runs_before


def test_concurrent_admissions_on_one_thread_get_consecutive_seqs(pg_runtime: Runtime) -> None:
    tenant = make_tenant(pg_runtime)
    thread = create_thread(pg_runtime, tenant, title="t", metadata={})
    with ThreadPoolExecutor(8) as pool:
        admitted = list(
            pool.map(lambda _: _admit(pg_runtime, tenant, thread.id, "enqueue"), range(24))
        )
    assert all(a.created for a in admitted)
    with pg_runtime.db.read() as session:
        seqs = session.scalars(
            select(ThreadEvent.seq).where(ThreadEvent.thread_id == thread.id)
        ).all()
        count = session.scalar(
            text("SELECT event_count FROM threads WHERE id = :id"), {"id": thread.id}
        )
    assert sorted(seqs) == list(range(1, 25)) and count == 24
