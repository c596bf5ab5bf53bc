"""The orchestrator's Celery task and background loops."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import select

from podium.messages import AdvanceRun, parse_message
from podium.queues import Queue, TaskName
from podium.runtime import Runtime
from podium.store import Run, RunStatus, utcnow
from podium_orchestrator.step import RunBusy, advance

log = logging.getLogger(__name__)

WAKE_AGAIN_S = 30.0


def register_tasks(runtime: Runtime) -> None:
    def advance_run(self: Any, payload: dict[str, Any]) -> None:
        message = parse_message(AdvanceRun, payload)
        try:
            advance(runtime, message)
        except RunBusy as exc:
            # The step holding the run will see this trigger's state or be retried after it.
            raise self.retry(exc=exc, countdown=0.2, max_retries=None) from exc
        except Exception as exc:
            # Store hiccups (deadlock, lost connection) are retried with backoff.
            log.warning("advance %s failed, retrying: %s", message.run_id, exc)
            raise self.retry(exc=exc, countdown=min(2**self.request.retries * 0.1, 10)) from exc

    # Registered without decorator syntax: Celery's decorator is untyped.
    runtime.celery.task(name=TaskName.ADVANCE_RUN.value, bind=True, max_retries=20)(advance_run)


def deadline_sweep_loop(runtime: Runtime, stop: threading.Event) -> None:
    """Wake runs that passed their deadline while nothing else would step them (a call that
    hangs, a lost message): their next step fails them with ``deadline_exceeded``."""
    woken: dict[str, float] = {}
    while not stop.wait(max(runtime.settings.outbox_sweep_s / 2, 0.5)):
        try:
            now = time.monotonic()
            woken = {r: t for r, t in woken.items() if now - t < WAKE_AGAIN_S}
            for run_id in overdue_runs(runtime):
                if run_id in woken:
                    continue  # a wake-up is already on its way; do not pile them up
                woken[run_id] = now
                runtime.celery.send_task(
                    TaskName.ADVANCE_RUN.value,
                    args=[AdvanceRun(run_id=run_id, reason="deadline").model_dump(mode="json")],
                    queue=Queue.ORCHESTRATOR.value,
                )
        except Exception as exc:
            log.warning("deadline sweep failed: %s", exc)


def overdue_runs(runtime: Runtime, limit: int = 200) -> list[str]:
    with runtime.db.session() as session:
        return list(
            session.scalars(
                select(Run.id)
                .where(
                    Run.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value]),
                    Run.deadline_at < utcnow(),
                )
                .limit(limit)
            )
        )


def outbox_sweep_loop(runtime: Runtime, stop: threading.Event) -> None:
    """Re-publish outbox rows whose immediate publish never happened (crash, broker outage)."""
    while not stop.wait(runtime.settings.outbox_sweep_s):
        try:
            sent = runtime.relay.sweep()
            if sent:
                log.info("outbox sweep re-published %d message(s)", sent)
        except Exception as exc:
            log.warning("outbox sweep failed: %s", exc)
