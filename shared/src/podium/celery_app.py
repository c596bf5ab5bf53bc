"""The Celery app factory every service uses.

Reliability settings (docs/architecture.md, "Guarantees"): JSON only; acks_late with
task_reject_on_worker_lost, so a SIGKILLed worker's task is redelivered rather than lost; prefetch
1, so a worker holds only what it runs; and a visibility timeout longer than the longest call, so a
slow call is never redelivered while it is still running.

Outages: a publish fails within about a second when the broker is down (short retry policy,
bounded socket timeouts) instead of blocking its caller; the outbox sweep publishes it later.
A worker reconnects by itself once the broker is back.

Shutdown: SIGTERM is Celery's warm shutdown: stop consuming, finish the running tasks, give
the messages not started (reserved, or waiting for a retry's countdown) back to the queue at
once, exit. (Celery's "soft shutdown" timeout cannot cancel a task of the threads pool, so it
is not used.) A worker killed before its running calls finished is case (a) of
docs/reliability.md: the reaper re-sends them once their lease lapses.

``PODIUM_UNSAFE_EARLY_ACK`` (test only, refused without ``PODIUM_ALLOW_UNSAFE=1``) turns early
acknowledgement back on so the fault tests can show that their harness detects the loss.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from podium.broker import TRANSPORT
from podium.queues import AGENTS_QUEUE_PREFIX, Queue, TaskName
from podium.settings import Settings


def _route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    # The agents queue is chosen per call (pools); other tasks have one fixed queue.
    fixed = {
        TaskName.ADVANCE_RUN.value: Queue.ORCHESTRATOR.value,
        TaskName.RUN_COMPLETED.value: Queue.LEARNER.value,
        TaskName.FEEDBACK_RECEIVED.value: Queue.LEARNER.value,
        TaskName.APPLY_RETENTION.value: Queue.LEARNER.value,
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
        # A broker that vanished must fail a publish, not hang it (kombu waits forever on a
        # dead socket otherwise); 10 s stays well above the 1 s BRPOP poll of a worker.
        options["socket_connect_timeout"] = 2
        options["socket_timeout"] = 10
    return options


# A publish whose broker is down gives up after ~0.3 s: the message is in the outbox (or the
# caller retries), and a request or a step is never blocked by the outage.
PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.1,
    "interval_max": 0.2,
}


def make_celery(settings: Settings, name: str) -> Celery:
    app = Celery(name, broker=settings.effective_broker_url, set_as_current=False)
    # Test only (see the module docstring); Settings refuses it without allow_unsafe.
    late_ack = not (settings.unsafe_early_ack and settings.allow_unsafe)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=late_ack,
        task_reject_on_worker_lost=late_ack,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_default_queue=Queue.ORCHESTRATOR.value,
        task_routes=(_route,),
        task_create_missing_queues=True,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        broker_pool_limit=max(settings.worker_concurrency, 10),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    if settings.effective_broker_url.startswith(("redis://", "rediss://")):
        # kombu's Redis transport, keeping one client per channel (podium.broker).
        app.conf.broker_transport = TRANSPORT
    return app


def is_agents_queue(queue: str) -> bool:
    return queue.startswith(AGENTS_QUEUE_PREFIX)
