"""Per-process wiring of settings, store, event streams, Celery and the outbox."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy.orm import Session

from podium.celery_app import make_celery
from podium.events import CallLeases, EventStream, make_call_leases, make_event_stream
from podium.messages import Message
from podium.outbox import OutboxRelay, stage
from podium.settings import Settings
from podium.store.db import Database
from podium.store.models import OutboxMessage
from podium.store.scoping import TENANT_KEY


@dataclass
class Tx:
    """One transaction plus the messages it will send once committed."""

    session: Session
    staged: list[OutboxMessage] = field(default_factory=list)

    def send(self, message: Message, queue: str | None = None) -> None:
        target = queue or message.QUEUE
        if target is None:
            raise ValueError(f"{type(message).__name__} needs an explicit queue")
        self.staged.append(stage(self.session, message, target))


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
    ) -> None:
        self.settings = settings
        self.name = name
        self.db = db or Database(settings)
        self.events = events or make_event_stream(settings)
        self.celery = celery or make_celery(settings, name)
        self.relay = OutboxRelay(self.db, self.celery)
        # Leases of running agent calls (see podium.events); connects on first use.
        self.leases = leases or make_call_leases(settings)

    @contextmanager
    def transaction(self, tenant_id: str | None = None) -> Iterator[Tx]:
        """Commit the work and its outbox rows together, then publish the rows."""
        with self.db.sessions() as session:
            if tenant_id is not None:
                session.info[TENANT_KEY] = tenant_id
            tx = Tx(session)
            with session.begin():
                yield tx
        if tx.staged:
            self.relay.publish(tx.staged)

    def close(self) -> None:
        self.events.close()
        self.leases.close()
        self.db.dispose()
