"""The Celery app factory every service uses.

Reliability settings (DESIGN §7): JSON only; acks_late with task_reject_on_worker_lost, so a
SIGKILLed worker's task is redelivered rather than lost; prefetch 1, so a worker holds only
what it runs; and a visibility timeout longer than the longest call, so a slow call is never
redelivered while it is still running.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from podium.queues import AGENTS_QUEUE_PREFIX, Queue, TaskName
from podium.settings import Settings


def _route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    # The agents queue is chosen per call (pools); other tasks have one fixed queue.
    fixed = {
        TaskName.ADVANCE_RUN.value: Queue.ORCHESTRATOR.value,
        TaskName.RUN_COMPLETED.value: Queue.LEARNER.value,
    }
    if name in fixed:
        return {"queue": fixed[name]}
    return None


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    url = settings.effective_broker_url
    if url.startswith("memory://"):
        # The in-process transport polls once a second by default: far too slow for chains.
        return {"polling_interval": 0.005}
    options: dict[str, Any] = {}
    if url.startswith(("redis://", "rediss://")):
        options["visibility_timeout"] = settings.visibility_timeout_s
        # Room for every pool slot plus consumer and publisher connections; redis-py's
        # default cap makes acks fail under a large threads pool.
        options["max_connections"] = max(settings.worker_concurrency, 16) * 2 + 20
        if settings.redis_key_prefix:
            options["global_keyprefix"] = settings.redis_key_prefix
    return options


def make_celery(settings: Settings, name: str) -> Celery:
    app = Celery(name, broker=settings.effective_broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_default_queue=Queue.ORCHESTRATOR.value,
        task_routes=(_route,),
        task_create_missing_queues=True,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        broker_pool_limit=max(settings.worker_concurrency, 10),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


def is_agents_queue(queue: str) -> bool:
    return queue.startswith(AGENTS_QUEUE_PREFIX)
