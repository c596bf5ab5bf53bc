"""How the lifecycle's hot transitions reach the database: Core statements built once (their
SQL compiled once per dialect, their cache key computed once) run on the transaction's
connection, with values bound at execution.

Through ``Session.execute`` every statement is rebuilt, re-keyed and passed through the ORM
(tenant criteria, autoflush, bulk-persistence bookkeeping): several times the cost of the
round trip itself. These statements bypass that ORM layer, so each one that takes an id from
a caller names its tenant itself (``tenant_id = :tenant_id``), as the tenant hook would.
The write guard (``podium.store.guards``) still sees every statement: it sits on the engine.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from podium.store.db import table

__all__ = ["connection", "run", "table"]


def connection(session: Session | Connection) -> Connection:
    """The connection of ``session``'s transaction (the session itself, if a connection)."""
    return session.connection() if isinstance(session, Session) else session


def run(session: Session | Connection, statement: Any, params: Any = None) -> Any:
    """Execute a prebuilt statement on the transaction's connection; its result."""
    return connection(session).execute(statement, params)
