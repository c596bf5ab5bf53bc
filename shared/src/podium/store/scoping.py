"""Tenant scoping in one place (docs/architecture.md, "Data").

A session opened with ``tenant_session`` carries its tenant in ``session.info``; a single
``do_orm_execute`` hook adds ``tenant_id = :tenant`` to every ORM SELECT, UPDATE and DELETE of
a tenant-owned model, including relationship loads. Call sites never filter by tenant
themselves, so a forgotten filter cannot leak another tenant's rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from podium.store.db import Database
from podium.store.models import TenantOwned

TENANT_KEY = "podium_tenant_id"


@event.listens_for(Session, "do_orm_execute")
def _scope_to_tenant(state: ORMExecuteState) -> None:
    tenant_id = state.session.info.get(TENANT_KEY)
    if tenant_id is None or not (state.is_select or state.is_update or state.is_delete):
        return
    state.statement = state.statement.options(
        with_loader_criteria(
            TenantOwned,
            lambda cls: cls.tenant_id == tenant_id,
            include_aliases=True,
        )
    )


@event.listens_for(Session, "before_flush")
def _stamp_tenant(session: Session, _ctx: object, _instances: object) -> None:
    tenant_id = session.info.get(TENANT_KEY)
    if tenant_id is None:
        return
    for obj in session.new:
        if isinstance(obj, TenantOwned):
            if obj.tenant_id is None:
                obj.tenant_id = tenant_id
            elif obj.tenant_id != tenant_id:
                raise PermissionError("a tenant-scoped session cannot write another tenant's row")


@contextmanager
def tenant_session(db: Database, tenant_id: str) -> Iterator[Session]:
    """A unit of work that can only see and change ``tenant_id``'s rows."""
    with db.sessions() as session, session.begin():
        session.info[TENANT_KEY] = tenant_id
        yield session


def scoped_tenant(session: Session) -> str:
    tenant_id = session.info.get(TENANT_KEY)
    if not isinstance(tenant_id, str):
        raise RuntimeError("this session is not scoped to a tenant")
    return tenant_id
