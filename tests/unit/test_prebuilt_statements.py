"""The lifecycle's hot transitions run statements built once on the transaction's connection,
outside the ORM's tenant hook (podium.lifecycle.sql). Driven in-process through the real
lifecycle on SQLite: each statement still names its tenant, the outbox rows of a transaction
are written with it or not at all, and the statements are reused, not rebuilt."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from podium.lifecycle import runs as run_lifecycle
from podium.lifecycle import step as step_module
from podium.lifecycle.admission import RunRequest
from podium.lifecycle.errors import NotFound
from podium.lifecycle.threads import create_thread
from podium.lifecycle.tx import owned_transaction
from podium.messages import AdvanceRun
from podium.runtime import Runtime
from podium.store import OutboxMessage, Run, Thread, ThreadEvent, new_id, utcnow
from tests.support.inproc import direct_run, make_tenant


def _request(text: str = "hello") -> RunRequest:
    return RunRequest(
        input=text,
        agent=None,
        pattern="direct",
        multitask="enqueue",
        idempotency_key=None,
        request_hash="h",
        deadline_at=utcnow() + timedelta(minutes=5),
        limits={},
    )


def _count(runtime: Runtime, model: type) -> int:
    with runtime.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_a_run_cannot_be_admitted_into_another_tenants_thread(runtime: Runtime) -> None:
    owner, other = make_tenant(runtime), make_tenant(runtime)
    thread = create_thread(runtime, owner, title="t", metadata={})
    runs, events = _count(runtime, Run), _count(runtime, ThreadEvent)
    with pytest.raises(NotFound):
        run_lifecycle.admit(runtime, other, thread.id, _request(), run_id=new_id(), token_budget=1)
    assert (_count(runtime, Run), _count(runtime, ThreadEvent)) == (runs, events)
    # The owner's admission of the same request goes through.
    admitted = run_lifecycle.admit(
        runtime, owner, thread.id, _request(), run_id=new_id(), token_budget=1
    )
    assert admitted.created and admitted.status == "queued"


def test_a_transaction_writes_all_its_outbox_rows_or_none(runtime: Runtime) -> None:
    before = _count(runtime, OutboxMessage)
    with owned_transaction(runtime) as tx:
        tx.send(AdvanceRun(run_id=new_id(), reason="run.created"))
        tx.send(AdvanceRun(run_id=new_id(), reason="run.created"))
    assert _count(runtime, OutboxMessage) == before + 2
    with pytest.raises(RuntimeError), owned_transaction(runtime) as tx:
        tx.send(AdvanceRun(run_id=new_id(), reason="run.created"))
        raise RuntimeError("the transition failed after staging its message")
    assert _count(runtime, OutboxMessage) == before + 2


def test_steps_reuse_the_statements_they_built(runtime: Runtime) -> None:
    step_module._step_statement.cache_clear()
    tenant = make_tenant(runtime)
    for _ in range(3):
        direct_run(runtime, tenant_id=tenant)
    # Three first steps set the same columns: one statement, built once and reused.
    info = step_module._step_statement.cache_info()
    assert info.currsize == 1 and info.hits == 2


def test_another_tenants_run_cannot_be_cancelled(runtime: Runtime) -> None:
    owner, other = make_tenant(runtime), make_tenant(runtime)
    run_id, _ = direct_run(runtime, tenant_id=owner)
    with pytest.raises(NotFound):
        run_lifecycle.cancel(runtime, other, run_id)
    with runtime.db.read() as session:
        run = session.execute(select(Run.cancel_requested, Run.version).where(Run.id == run_id))
        assert run.one() == (False, 2)
    assert run_lifecycle.cancel(runtime, owner, run_id) == "running"


def test_orm_work_in_a_transaction_commits_with_it(runtime: Runtime) -> None:
    # A transition that asks for the ORM session gets one joined to the transaction: its
    # pending rows are written before the commit, and rolled back with it.
    tenant = make_tenant(runtime)
    thread = create_thread(runtime, tenant, title="kept", metadata={})
    with runtime.db.read() as session:
        assert session.get(Thread, thread.id) is not None
    with pytest.raises(RuntimeError), owned_transaction(runtime, tenant) as tx:
        tx.session.add(Thread(tenant_id=tenant, title="dropped", meta={}))
        tx.session.flush()
        raise RuntimeError("the transition failed after its ORM write")
    with runtime.db.read() as session:
        titles = session.scalars(select(Thread.title).where(Thread.tenant_id == tenant)).all()
    assert titles == ["kept"]
