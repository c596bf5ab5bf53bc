"""The store on both backends: migrations, drift between models and migrations, tenant
scoping, thread seqs, and the outbox relay."""

from __future__ import annotations

import concurrent.futures
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, update

from podium.lifecycle.threads import append_event
from podium.settings import Settings
from podium.store import Base, Database, Run, Tenant, Thread, ThreadEvent, tenant_session
from podium.store.guards import ForeignWrite, owner_writes
from podium.store.migrate import downgrade, upgrade
from podium.store.provision import drop_database, ensure_database
from tests.conftest import PG_SERVER
from tests.support.services import ensure_postgres

TABLES = {
    "tenants",
    "api_keys",
    "agents",
    "threads",
    "thread_events",
    "runs",
    "agent_calls",
    "orchestration_contexts",
    "orchestration_decisions",
    "postmortems",
    "outbox",
    "processed_events",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        ensure_postgres()
        url = f"{PG_SERVER}/podium_store_{uuid.uuid4().hex[:10]}"
        ensure_database(url)
    database = Database(Settings(database_url=url))
    upgrade(database.engine)
    yield database
    database.dispose()
    if request.param == "postgresql":
        drop_database(url)


def test_migrations_create_every_table_and_match_the_models(db):
    assert set(inspect(db.engine).get_table_names()) >= TABLES
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff


def test_migrations_are_reversible_and_rerunnable(db):
    downgrade(db.engine, "base")
    assert not TABLES & set(inspect(db.engine).get_table_names())
    upgrade(db.engine)
    upgrade(db.engine)  # idempotent
    assert set(inspect(db.engine).get_table_names()) >= TABLES


def _tenant_with_thread(db, name):
    with owner_writes(), db.session() as s:
        tenant = Tenant(name=name)
        s.add(tenant)
        s.flush()
        thread = Thread(tenant_id=tenant.id, title=name)
        s.add(thread)
        s.flush()
        return tenant.id, thread.id


def test_tenant_sessions_only_see_their_own_rows(db):
    a, thread_a = _tenant_with_thread(db, "a")
    b, thread_b = _tenant_with_thread(db, "b")
    with owner_writes(), tenant_session(db, a) as s:
        assert [t.id for t in s.scalars(select(Thread))] == [thread_a]
        assert s.scalars(select(Thread).where(Thread.id == thread_b)).first() is None
        # Stamped automatically, and never allowed to write another tenant's row.
        s.add(Thread(title="stamped"))
        s.flush()
        assert s.scalars(select(Thread).where(Thread.title == "stamped")).one().tenant_id == a
    with pytest.raises(PermissionError), owner_writes(), tenant_session(db, a) as s:
        s.add(Thread(tenant_id=b, title="smuggled"))
        s.flush()
    with db.session() as s:  # unscoped system session sees everything
        assert len(s.scalars(select(Thread)).all()) == 3


def test_scoped_updates_cannot_touch_other_tenants(db):

    a, _ = _tenant_with_thread(db, "a")
    _, thread_b = _tenant_with_thread(db, "b")
    with owner_writes(), tenant_session(db, a) as s:
        result = s.execute(update(Thread).where(Thread.id == thread_b).values(title="pwned"))
        assert result.rowcount == 0
    with db.session() as s:
        assert s.get(Thread, thread_b).title == "b"


def test_concurrent_appends_get_unique_consecutive_seqs(db):
    tenant, thread = _tenant_with_thread(db, "seq")

    def append(n: int) -> int:
        with owner_writes(), db.session() as s:
            return append_event(
                s,
                tenant_id=tenant,
                thread_id=thread,
                kind="user_message",
                role="user",
                content=str(n),
            )[1]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        seqs = sorted(pool.map(append, range(40)))
    assert seqs == list(range(1, 41))
    with db.session() as s:
        assert s.get(Thread, thread).event_count == 40
        assert (
            len(s.scalars(select(ThreadEvent).where(ThreadEvent.thread_id == thread)).all()) == 40
        )


def test_run_state_cannot_be_written_outside_the_lifecycle(db):
    tenant, thread = _tenant_with_thread(db, "guard")
    with pytest.raises(ForeignWrite, match=r"'runs' outside podium\.lifecycle"), db.session() as s:
        s.add(Run(tenant_id=tenant, thread_id=thread, input="x", input_event_seq=1))
        s.flush()
    with pytest.raises(ForeignWrite, match="'threads'"), db.session() as s:
        s.execute(update(Thread).where(Thread.id == thread).values(title="renamed"))
    with owner_writes(), db.session() as s:  # the lifecycle may
        s.execute(update(Thread).where(Thread.id == thread).values(title="renamed"))
    with db.session() as s:
        assert s.get(Thread, thread).title == "renamed"


def test_engine_url_normalises_plain_postgresql_scheme():
    from podium.store.db import make_engine

    engine = make_engine(Settings(database_url="postgresql://u@127.0.0.1:5432/x"))
    assert engine.url.drivername == "postgresql+psycopg"
    engine.dispose()
