"""Agent calls through the fair dispatcher (podium.fair_dispatch): submit a call when it is
created, complete it when it ends, and send the ExecuteAgentCall messages the dispatcher
releases. The orchestrator submits; the worker completes; the reaper repairs.

The store stays the truth: a call is ``pending`` in the store until a worker claims it, so
a call lost between the commit and the submit (process killed, Redis down) is found by the
orchestrator's reaper and submitted again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from podium.messages import ExecuteAgentCall
from podium.queues import TaskName, agents_queue
from podium.runtime import Runtime
from podium.settings import Settings
from podium.store.models import Agent

log = logging.getLogger(__name__)


def call_item(call_id: str, run_id: str) -> str:
    return f"{call_id}:{run_id}"


def parse_item(item: str) -> tuple[str, str]:
    call_id, _, run_id = item.partition(":")
    return call_id, run_id


def known_pools(session: Session, settings: Settings) -> list[str]:
    """The agent pools the session's agents name (all tenants', or one tenant's in a tenant
    session), plus this deployment's default pool."""
    pools = set(session.scalars(select(Agent.pool).distinct()).all())
    pools.add(settings.agents_pool)
    return sorted(pools)


def send_calls(runtime: Runtime, pool: str, items: Iterable[str]) -> int:
    """Publish ExecuteAgentCall for the items the dispatcher released."""
    sent = 0
    for item in items:
        call_id, run_id = parse_item(item)
        message = ExecuteAgentCall(call_id=call_id, run_id=run_id)
        runtime.celery.send_task(
            TaskName.EXECUTE_AGENT_CALL.value,
            args=[message.model_dump(mode="json")],
            queue=agents_queue(pool),
        )
        sent += 1
    return sent


def submit_call(
    runtime: Runtime, pool: str, tenant_id: str, call_id: str, run_id: str, tenant_cap: int
) -> None:
    """Queue a committed call for its tenant's turn, and send whatever is due now."""
    released = runtime.fair.submit(
        pool, tenant_id, call_item(call_id, run_id), tenant_cap=tenant_cap
    )
    send_calls(runtime, pool, released)


def complete_call(runtime: Runtime, pool: str, call_id: str, run_id: str) -> None:
    """Free the call's slot and send the calls that were waiting for one. Never raises: a
    slot left taken is freed by the reaper."""
    try:
        released = runtime.fair.complete(pool, call_item(call_id, run_id))
        send_calls(runtime, pool, released)
    except Exception as exc:
        log.warning("fair dispatch: completing call %s failed: %s", call_id, exc)
