"""Transactional outbox (docs/architecture.md, "Messages"): a message to another service is
written in the same transaction as the state change that caused it, published right after the
commit, and re-published by a periodic sweep if that publish did not happen (crash, broker
outage). Delivery is therefore at-least-once; consumers deduplicate by message id.

A new agent call's ``SubmitAgentCall`` is relayed to the fair dispatcher rather than to a
queue (``podium.call_queue``); submitting twice is a no-op there.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import Connection, insert, select, update

from podium import call_queue
from podium.fair_dispatch import FairDispatcher
from podium.messages import Message, SubmitAgentCall, summary
from podium.queues import TaskName
from podium.store.db import Database, table
from podium.store.models import OutboxMessage, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Staged:
    """A message staged in a transaction: its outbox row, written with the transaction's other
    staged messages in one INSERT just before the commit (``write_staged``)."""

    id: str
    task: str
    queue: str
    payload: dict[str, Any]


def stage(message: Message, queue: str) -> Staged:
    return Staged(message.id, message.TASK.value, queue, message.model_dump(mode="json"))


# Built once: its compiled form is cached by the statement, not rebuilt per transaction.
_INSERT = insert(table(OutboxMessage))


def write_staged(connection: Connection, rows: list[Staged]) -> None:
    """Write the outbox rows of ``rows`` on the transaction's connection (one statement)."""
    now = utcnow()
    connection.execute(
        _INSERT,
        [
            {
                "id": r.id,
                "task": r.task,
                "queue": r.queue,
                "payload": r.payload,
                "created_at": now,
                "attempts": 0,
            }
            for r in rows
        ],
    )


# Marks are batched over this long: one UPDATE per second and process, whatever the load.
# Well under the sweep's 5 s: a marked row is never re-sent; an unmarked one (a crash) is,
# and consumers deduplicate it.
MARK_EVERY_S = 1.0
# How long a sweeper owns the rows it claimed before another may take them.
CLAIM_S = 30.0


class OutboxRelay:
    def __init__(self, db: Database, celery: Celery, fair: Callable[[], FairDispatcher]) -> None:
        self.db = db
        self.celery = celery
        self._fair = fair
        # Published ids are marked in batches by one thread: one UPDATE per MARK_EVERY_S
        # instead of a transaction per commit. A mark lost in a crash only means the sweep sends
        # the message again, which every consumer deduplicates.
        self._to_mark: list[str] = []
        self._mark_lock = threading.Lock()
        self._marker_pid: int | None = None
        self._wake = threading.Event()

    def _send(self, task: str, queue: str, payload: dict[str, Any]) -> None:
        if task == TaskName.SUBMIT_AGENT_CALL.value:
            message = SubmitAgentCall.model_validate(payload)
            call_queue.submit(self._fair(), self.celery, message)
            return
        # A replayed dead letter's payload may be anything; a message's id is its task id.
        task_id = payload.get("id") if isinstance(payload, dict) else None
        self.celery.send_task(
            task, args=[payload], queue=queue, task_id=task_id, argsrepr=summary(payload)
        )

    def publish(self, rows: list[Staged]) -> int:
        """Publish staged rows after their transaction committed. Failures are left to the sweep."""
        sent: list[str] = []
        for row in rows:
            try:
                self._send(row.task, row.queue, row.payload)
            except Exception as exc:  # broker down: the sweep retries later
                log.warning("outbox publish of %s failed, left for the sweep: %s", row.id, exc)
                break
            sent.append(row.id)
        if sent:
            with self._mark_lock:
                self._to_mark.extend(sent)
            self._ensure_marker()
        return len(sent)

    def _ensure_marker(self) -> None:
        if self._marker_pid == os.getpid():  # one thread per process (prefork children too)
            return
        self._marker_pid = os.getpid()
        threading.Thread(target=self._mark_loop, name="podium-outbox-marker", daemon=True).start()

    def _mark_loop(self) -> None:
        while True:
            self._wake.wait(MARK_EVERY_S)
            self._wake.clear()
            self.flush_marks()

    def flush_marks(self) -> None:
        """Mark what was published since the last flush (also called at shutdown)."""
        with self._mark_lock:
            ids, self._to_mark = self._to_mark, []
        if not ids:
            return
        try:
            self._mark_published(ids)
        except Exception as exc:  # the store is down: the sweep re-sends, consumers dedupe
            log.warning("outbox: could not mark %d published rows: %s", len(ids), exc)

    def _mark_published(self, ids: list[str]) -> None:
        with self.db.session() as session:
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(ids))
                .values(published_at=utcnow())
                .execution_options(synchronize_session=False)
            )

    def sweep(self, older_than_s: float = 5.0, limit: int = 200) -> int:
        """Publish rows whose immediate publish never happened. Returns how many were sent.

        The rows are claimed for ``CLAIM_S`` in one short transaction and published after it
        (never with a transaction open or a row locked while the broker is waited on); a
        sweeper that dies meanwhile leaves them to the next claim."""
        now = utcnow()
        due = (
            select(OutboxMessage.id)
            .where(
                OutboxMessage.published_at.is_(None),
                OutboxMessage.created_at < now - timedelta(seconds=older_than_s),
                (OutboxMessage.claimed_until.is_(None)) | (OutboxMessage.claimed_until < now),
            )
            .order_by(OutboxMessage.created_at)
            .limit(limit)
        )
        if self.db.is_postgres:
            # Two sweepers (two orchestrator replicas) claim disjoint rows.
            due = due.with_for_update(skip_locked=True)
        with self.db.session() as session:
            rows = session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(due.scalar_subquery()))
                .values(claimed_until=now + timedelta(seconds=CLAIM_S))
                .returning(
                    OutboxMessage.id, OutboxMessage.task, OutboxMessage.queue, OutboxMessage.payload
                )
                .execution_options(synchronize_session=False)
            ).all()
        sent: list[str] = []
        for row_id, task, queue, payload in sorted(rows, key=lambda r: r[0]):
            try:
                self._send(task, queue, payload)
            except (ValueError, TypeError) as exc:  # can never be published: not retried
                log.error("outbox: row %s (%s) cannot be published, dropped: %s", row_id, task, exc)
            except Exception as exc:
                log.warning("outbox sweep: publish failed, will retry: %s", exc)
                break
            sent.append(row_id)
        if sent:
            with self.db.session() as session:
                session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id.in_(sent))
                    .values(published_at=utcnow(), attempts=OutboxMessage.attempts + 1)
                    .execution_options(synchronize_session=False)
                )
        return len(sent)
