"""Agent calls between the store and the pools' queues, through the fair dispatcher
(``podium.fair_dispatch``).

A call is created ``pending`` by a lifecycle transition, which stages a ``SubmitAgentCall`` in
the outbox in the same transaction. The outbox relays it here: the dispatcher queues it for
its tenant's turn and returns whatever may run now, and ``send_released`` publishes those as
``ExecuteAgentCall``. The dispatcher is the only publisher of ``ExecuteAgentCall`` besides the
outbox; a release is idempotent (an item is handed out once), and a call whose release was
lost stays ``pending`` in the store, where the reaper finds it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from podium.fair_dispatch import FairDispatcher
from podium.messages import ExecuteAgentCall, SubmitAgentCall, summary
from podium.queues import TaskName, agents_queue
from podium.settings import Settings
from podium.store.models import Agent

log = logging.getLogger(__name__)


def call_item(call_id: str, run_id: str) -> str:
    return f"{call_id}:{run_id}"


def parse_item(item: str) -> tuple[str, str]:
    call_id, _, run_id = item.partition(":")
    return call_id, run_id


def known_pools(session: Session, settings: Settings) -> list[str]:
    """The agent pools the session's agents name, plus this deployment's default pool."""
    pools = set(session.scalars(select(Agent.pool).distinct()).all())
    pools.add(settings.agents_pool)
    return sorted(pools)


def send_released(celery: Celery, pool: str, items: Iterable[str]) -> int:
    """Publish ExecuteAgentCall for the items the dispatcher released."""
    sent = 0
    for item in items:
        call_id, run_id = parse_item(item)
        message = ExecuteAgentCall(call_id=call_id, run_id=run_id)
        payload = message.model_dump(mode="json")
        celery.send_task(
            TaskName.EXECUTE_AGENT_CALL.value,
            args=[payload],
            queue=agents_queue(pool),
            task_id=message.id,
            argsrepr=summary(payload),
        )
        sent += 1
    return sent


def submit(fair: FairDispatcher, celery: Celery, message: SubmitAgentCall) -> None:
    """Queue a committed call for its tenant's turn (a no-op if it is already queued or in
    flight), and publish whatever is due now."""
    released = fair.submit(
        message.pool,
        message.tenant_id,
        call_item(message.call_id, message.run_id),
        tenant_cap=message.tenant_cap,
    )
    send_released(celery, message.pool, released)


def complete(fair: FairDispatcher, celery: Celery, pool: str, call_id: str, run_id: str) -> None:
    """Free the call's slot and publish the calls that were waiting for one. Never raises: a
    slot left taken is freed by the reaper."""
    try:
        released = fair.complete(pool, call_item(call_id, run_id))
        send_released(celery, pool, released)
    except Exception as exc:
        log.warning("fair dispatch: completing call %s failed: %s", call_id, exc)
