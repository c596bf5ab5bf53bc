"""The orchestrator's Celery task and background loops."""

from __future__ import annotations

import logging
import threading
from typing import Any

from podium.messages import AdvanceRun, parse_message
from podium.queues import TaskName
from podium.runtime import Runtime
from podium_orchestrator.step import advance

log = logging.getLogger(__name__)


def register_tasks(runtime: Runtime) -> None:
    def advance_run(self: Any, payload: dict[str, Any]) -> None:
        message = parse_message(AdvanceRun, payload)
        try:
            advance(runtime, message)
        except Exception as exc:
            # Store hiccups (deadlock, lost connection) are retried with backoff.
            log.warning("advance %s failed, retrying: %s", message.run_id, exc)
            raise self.retry(exc=exc, countdown=min(2**self.request.retries * 0.1, 10)) from exc

    # Registered without decorator syntax: Celery's decorator is untyped.
    runtime.celery.task(name=TaskName.ADVANCE_RUN.value, bind=True, max_retries=20)(advance_run)


def outbox_sweep_loop(runtime: Runtime, stop: threading.Event) -> None:
    """Re-publish outbox rows whose immediate publish never happened (crash, broker outage)."""
    while not stop.wait(runtime.settings.outbox_sweep_s):
        try:
            sent = runtime.relay.sweep()
            if sent:
                log.info("outbox sweep re-published %d message(s)", sent)
        except Exception as exc:
            log.warning("outbox sweep failed: %s", exc)
