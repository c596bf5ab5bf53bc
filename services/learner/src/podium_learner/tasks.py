"""The learner's Celery tasks."""

from __future__ import annotations

import logging
from typing import Any

from podium.messages import RunCompleted, parse_message
from podium.queues import TaskName
from podium.runtime import Runtime
from podium_learner.postmortem import record_postmortem

log = logging.getLogger(__name__)


def register_tasks(runtime: Runtime) -> None:
    def run_completed(self: Any, payload: dict[str, Any]) -> None:
        message = parse_message(RunCompleted, payload)
        try:
            record_postmortem(runtime, message)
        except Exception as exc:
            log.warning("post-mortem of %s failed, retrying: %s", message.run_id, exc)
            raise self.retry(exc=exc, countdown=min(2**self.request.retries * 0.2, 15)) from exc

    # Registered without decorator syntax: Celery's decorator is untyped.
    runtime.celery.task(name=TaskName.RUN_COMPLETED.value, bind=True, max_retries=10)(run_completed)
