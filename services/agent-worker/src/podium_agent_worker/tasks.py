"""The agent worker's Celery task."""

from __future__ import annotations

import logging
from typing import Any

from podium.messages import ExecuteAgentCall, MessageError, parse_message
from podium.queues import TaskName
from podium.runtime import Runtime
from podium_agent_worker.execute import Executor

log = logging.getLogger(__name__)


def register_tasks(runtime: Runtime) -> None:
    executor = Executor(runtime)

    def execute_call(self: Any, payload: dict[str, Any]) -> None:
        message = parse_message(ExecuteAgentCall, payload)
        try:
            executor.execute(message)
        except MessageError:
            raise
        except Exception as exc:
            # Store or broker hiccups: try again; the call's state makes the retry safe.
            log.warning("call %s failed outside the provider, retrying: %s", message.call_id, exc)
            raise self.retry(exc=exc, countdown=min(2**self.request.retries * 0.2, 15)) from exc

    # Registered without decorator syntax: Celery's decorator is untyped.
    runtime.celery.task(name=TaskName.EXECUTE_AGENT_CALL.value, bind=True, max_retries=10)(
        execute_call
    )
