"""The agent worker's Celery task."""

from __future__ import annotations

from podium.consumers import register_consumer
from podium.messages import ExecuteAgentCall
from podium.queues import TaskName
from podium.runtime import Runtime
from podium_agent_worker.execute import Executor


def register_tasks(runtime: Runtime) -> None:
    executor = Executor(runtime)
    # Store or broker hiccups are retried; the call's state makes a retry safe.
    register_consumer(
        runtime,
        name=TaskName.EXECUTE_AGENT_CALL.value,
        model=ExecuteAgentCall,
        handler=executor.execute,
    )
