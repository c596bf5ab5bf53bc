"""Per-process wiring of settings, store, event streams, Celery and the outbox."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from celery import Celery
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from podium.celery_app import make_celery
from podium.events import CallLeases, EventStream, make_call_leases, make_event_stream
from podium.fair_dispatch import FairDispatcher, make_fair_dispatcher
from podium.messages import Message
from podium.outbox import OutboxRelay, Staged, stage, write_staged
from podium.quotas import Quotas, make_quotas
from podium.settings import Settings
from podium.store.db import Database
from podium.store.scoping import TENANT_KEY

log = logging.getLogger(__name__)


class Tx:
    """One transaction plus the messages it will send once committed.

    The transaction is ``connection``'s: the lifecycle's hot transitions run their prebuilt
    statements on it directly. ``session``, an ORM session joined to the same transaction
    (and scoped to its tenant), is made only when a transition asks for it: most never do,
    and a session's bookkeeping costs more than their statements."""

    def __init__(
        self,
        connection: Connection,
        sessions: Callable[..., Session],
        tenant_id: str | None = None,
    ) -> None:
        self.connection = connection
        self.staged: list[Staged] = []
        # Work for after the commit (never on rollback); a failure is logged, not raised, so
        # each hook must be repairable from the store (the reaper does that).
        self.after_commit: list[Callable[[], object]] = []
        self._sessions = sessions
        self._tenant_id = tenant_id
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            # Joined to the connection's transaction: the session never commits it (the
            # transaction's owner does), but its rollback would roll it back.
            self._session = self._sessions(bind=self.connection)
            if self._tenant_id is not None:
                self._session.info[TENANT_KEY] = self._tenant_id
        return self._session

    def send(self, message: Message, queue: str | None = None) -> None:
        target = queue or message.QUEUE
        if target is None:
            raise ValueError(f"{type(message).__name__} needs an explicit queue")
        self.staged.append(stage(message, target))

    def prepare_commit(self) -> None:
        """The session's pending changes, then the outbox rows, into the transaction."""
        if self._session is not None:
            self._session.flush()
        if self.staged:
            write_staged(self.connection, self.staged)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        celery: Celery | None = None,
        events: EventStream | None = None,
        db: Database | None = None,
        leases: CallLeases | None = None,
        quotas: Quotas | None = None,
        fair: FairDispatcher | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.db = db or Database(settings)
        self.events = events or make_event_stream(settings)
        self.celery = celery or make_celery(settings, name)
        self.relay = OutboxRelay(self.db, self.celery, lambda: self.fair)
        # Leases of running agent calls (see podium.events); connects on first use.
        self.leases = leases or make_call_leases(settings)
        self._quotas = quotas
        self._fair = fair
        # Task slots of this process's Celery pool, once known (announced to the fair
        # dispatcher by agent workers).
        self.slots = 0

    @property
    def quotas(self) -> Quotas:
        """Tenant quota counters (Redis; in memory when embedded). Made on first use."""
        if self._quotas is None:
            self._quotas = make_quotas(self.settings)
        return self._quotas

    @property
    def fair(self) -> FairDispatcher:
        """The fair dispatcher of agent calls across tenants. Made on first use."""
        if self._fair is None:
            self._fair = make_fair_dispatcher(self.settings)
        return self._fair

    @contextmanager
    def transaction(self, tenant_id: str | None = None) -> Iterator[Tx]:
        """Commit the work and its outbox rows together, then publish the rows."""
        with self.db.engine.begin() as connection:
            tx = Tx(connection, self.db.sessions, tenant_id)
            try:
                yield tx
                tx.prepare_commit()
            finally:
                tx.close()
        if tx.staged:
            self.relay.publish(tx.staged)
        for hook in tx.after_commit:
            try:
                hook()
            except Exception as exc:
                log.warning("after-commit hook failed (left to the reaper): %s", exc)

    def close(self) -> None:
        self.relay.flush_marks()
        self.events.close()
        self.leases.close()
        if self._quotas is not None:
            self._quotas.close()
        if self._fair is not None:
            self._fair.close()
        self.db.dispose()
