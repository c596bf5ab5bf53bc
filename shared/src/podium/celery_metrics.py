"""Celery task metrics (from Celery signals), worker gauges, and the shared-state collector.

Task metrics
    ``connect_signals()`` hooks Celery's signals once per process: a task received by the
    consumer, started, succeeded, failed or retried is counted by task name and queue, and its
    run time observed. ``podium_celery_tasks_in_flight`` and ``podium_agent_calls_in_flight``
    are per-process gauges (so per worker: Prometheus adds the ``instance`` label). Under a
    prefork pool the handlers run in the pool's child processes; ``podium.worker_main`` then
    runs prometheus_client in multiprocess mode and these metrics are summed over the children.

Shared state
    ``StateCollector`` reads, at scrape time, what no single process owns: the depth of every
    ``orchestrator``, ``learner`` and ``agents.*`` queue on the Redis broker (every priority
    level of kombu's Redis transport, under ``PODIUM_REDIS_KEY_PREFIX``), the broker's unacked
    messages, and the outbox's unpublished rows and the age of the oldest one. It is exported
    by the gateway and the orchestrator, so the same series come from more than one target:
    aggregate with ``max by (queue)``, never ``sum``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from kombu.transport.redis import Channel as RedisChannel
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from podium.metrics import OTHER
from podium.queues import AGENTS_QUEUE_PREFIX, Queue, TaskName
from podium.settings import Settings
from podium.store.db import Database
from podium.store.models import OutboxMessage, utcnow

log = logging.getLogger(__name__)

# --- label values -------------------------------------------------------------------------
TASK_NAMES = frozenset(t.value for t in TaskName)
FIXED_QUEUES = (Queue.ORCHESTRATOR.value, Queue.LEARNER.value)


def task_label(name: str | None) -> str:
    return name if name in TASK_NAMES else OTHER


def queue_label(queue: str | None) -> str:
    """A Podium queue name (``orchestrator``, ``learner``, ``agents.<pool>``), else ``other``."""
    if not queue:
        return OTHER
    if queue in FIXED_QUEUES:
        return queue
    pool = queue.removeprefix(AGENTS_QUEUE_PREFIX)
    if (
        queue.startswith(AGENTS_QUEUE_PREFIX)
        and 0 < len(pool) <= 64
        and all(c.isalnum() or c in "-_" for c in pool)
    ):
        return queue
    return OTHER


def _queue_of(delivery_info: Any) -> str:
    if not isinstance(delivery_info, dict):
        return OTHER
    return queue_label(delivery_info.get("routing_key") or delivery_info.get("exchange"))


# --- task metrics -------------------------------------------------------------------------
CELERY_TASKS_RECEIVED = Counter(
    "podium_celery_tasks_received_total",
    "Tasks a worker's consumer took from the broker",
    ["task", "queue"],
)
CELERY_TASKS_STARTED = Counter(
    "podium_celery_tasks_started_total", "Task executions started", ["task", "queue"]
)
CELERY_TASKS_SUCCEEDED = Counter(
    "podium_celery_tasks_succeeded_total", "Task executions that succeeded", ["task", "queue"]
)
CELERY_TASKS_FAILED = Counter(
    "podium_celery_tasks_failed_total",
    "Task executions that failed for good (no retry left or not retryable)",
    ["task", "queue"],
)
CELERY_TASKS_RETRIED = Counter(
    "podium_celery_tasks_retried_total",
    "Task executions that ended by scheduling a retry",
    ["task", "queue"],
)
CELERY_TASK_DURATION = Histogram(
    "podium_celery_task_duration_seconds",
    "Task execution time, whatever its outcome",
    ["task", "queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)
CELERY_TASKS_IN_FLIGHT = Gauge(
    "podium_celery_tasks_in_flight",
    "Tasks executing in this worker now",
    ["task", "queue"],
    multiprocess_mode="livesum",
)
AGENT_CALLS_IN_FLIGHT = Gauge(
    "podium_agent_calls_in_flight",
    "Agent calls executing in this agent worker now",
    ["queue"],
    multiprocess_mode="livesum",
)
WORKER_SLOTS = Gauge(
    "podium_worker_concurrency_slots",
    "Pool slots (concurrency) of this worker",
    ["service"],
    multiprocess_mode="livemax",
)

_started: dict[tuple[str, int], float] = {}
_connected: set[str] = set()
_connect_lock = threading.Lock()


def _key(task_id: str | None) -> tuple[str, int]:
    return (task_id or "", threading.get_ident())


def _on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    name = getattr(request, "name", None)
    CELERY_TASKS_RECEIVED.labels(
        task_label(name), _queue_of(getattr(request, "delivery_info", None))
    ).inc()


def _labels_of(task: Any) -> tuple[str, str]:
    request = getattr(task, "request", None)
    return task_label(getattr(task, "name", None)), _queue_of(
        getattr(request, "delivery_info", None)
    )


def _on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    name, queue = _labels_of(task or sender)
    _started[_key(task_id)] = time.perf_counter()
    CELERY_TASKS_STARTED.labels(name, queue).inc()
    CELERY_TASKS_IN_FLIGHT.labels(name, queue).inc()
    if name == TaskName.EXECUTE_AGENT_CALL.value:
        AGENT_CALLS_IN_FLIGHT.labels(queue).inc()


def _on_postrun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    name, queue = _labels_of(task or sender)
    started = _started.pop(_key(task_id), None)
    if started is None:
        return  # prerun was not seen (signals connected mid-task): nothing to balance
    CELERY_TASK_DURATION.labels(name, queue).observe(time.perf_counter() - started)
    CELERY_TASKS_IN_FLIGHT.labels(name, queue).dec()
    if name == TaskName.EXECUTE_AGENT_CALL.value:
        AGENT_CALLS_IN_FLIGHT.labels(queue).dec()


def _on_success(sender: Any = None, **_: Any) -> None:
    CELERY_TASKS_SUCCEEDED.labels(*_labels_of(sender)).inc()


def _on_failure(sender: Any = None, **_: Any) -> None:
    CELERY_TASKS_FAILED.labels(*_labels_of(sender)).inc()


def _on_retry(sender: Any = None, request: Any = None, **_: Any) -> None:
    name = task_label(getattr(sender, "name", None))
    CELERY_TASKS_RETRIED.labels(name, _queue_of(getattr(request, "delivery_info", None))).inc()


def _on_process_shutdown(**_: Any) -> None:
    # A prefork child going away: drop its live gauges from the aggregate.
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def connect_signals() -> None:
    """Hook the handlers to Celery's signals (every app of the process); idempotent."""
    from celery import signals

    with _connect_lock:
        if _connected:
            return
        pairs = (
            (signals.task_received, _on_received),
            (signals.task_prerun, _on_prerun),
            (signals.task_postrun, _on_postrun),
            (signals.task_success, _on_success),
            (signals.task_failure, _on_failure),
            (signals.task_retry, _on_retry),
            (signals.worker_process_shutdown, _on_process_shutdown),
        )
        for signal, handler in pairs:
            signal.connect(handler, weak=False, dispatch_uid=f"podium.metrics.{handler.__name__}")
        _connected.add("signals")


# --- shared state: queue depth and outbox lag ---------------------------------------------
QUEUE_DEPTH = "podium_queue_depth_messages"
QUEUE_UNACKED = "podium_queue_unacked_messages"
OUTBOX_UNPUBLISHED = "podium_outbox_unpublished_messages"
OUTBOX_OLDEST_AGE = "podium_outbox_oldest_unpublished_age_seconds"
COLLECTOR_UP = "podium_state_collector_up"

# kombu's Redis transport (5.x): a queue is one list per priority level. Level 0 is the
# queue's own name, the others are "<queue>\x06\x16<level>" (Channel.sep and
# Channel.priority_steps); bindings live in the set "_kombu.binding.<exchange>" whose
# members are "<routing key>\x06\x16<pattern>\x06\x16<queue>"; messages delivered and not
# yet acked are the fields of the hash "unacked". With a global_keyprefix every one of these
# keys is prefixed (Celery's `global_keyprefix` transport option = PODIUM_REDIS_KEY_PREFIX).
KOMBU_SEP: str = RedisChannel.sep  # "\x06\x16"
KOMBU_PRIORITY_STEPS: tuple[int, ...] = tuple(RedisChannel.priority_steps)  # 0, 3, 6, 9
KOMBU_BINDING_PREFIX: str = RedisChannel.keyprefix_queue.split("%s")[0]  # "_kombu.binding."
KOMBU_UNACKED: str = RedisChannel.unacked_key  # "unacked"
MAX_QUEUES = 64


def queue_keys(queue: str, prefix: str = "") -> list[str]:
    """The Redis lists that hold ``queue``'s messages, one per priority level."""
    return [
        f"{prefix}{queue}" if step == 0 else f"{prefix}{queue}{KOMBU_SEP}{step}"
        for step in KOMBU_PRIORITY_STEPS
    ]


def _glob_escape(value: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in value)


class StateCollector(Collector):
    """Queue depth and outbox lag, read at scrape time (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        db: Database | None,
        *,
        discovery_interval_s: float = 60.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.discovery_interval_s = discovery_interval_s
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self.bind(settings, db)

    def bind(self, settings: Settings, db: Database | None) -> None:
        """(Re)point the collector at a process's settings and store."""
        with self._lock:
            self.settings = settings
            self.db = db
            self.prefix = settings.redis_key_prefix
            url = settings.effective_broker_url
            self.broker_url = url if url.startswith(("redis://", "rediss://")) else None
            if self._client is not None:
                self._client.close()
            self._client = None
            self._queues: set[str] = set()
            self._discovered_at = float("-inf")
            self._last_warning: dict[str, float] = {}

    # --- prometheus_client Collector protocol --------------------------------------------
    def describe(self) -> Iterable[Metric]:
        # Declared without samples, so registering never touches Redis or the store.
        return list(self.families().values())

    def collect(self) -> Iterable[Metric]:
        families = self.families()
        up = families[COLLECTOR_UP]
        with self._lock:
            if self.broker_url is not None:
                try:
                    for queue, size in sorted(self.queue_depths().items()):
                        families[QUEUE_DEPTH].add_metric([queue], size)
                    unacked = self._redis().hlen(f"{self.prefix}{KOMBU_UNACKED}")
                    families[QUEUE_UNACKED].add_metric([], int(unacked))
                    up.add_metric(["broker"], 1)
                except redis.RedisError as exc:
                    self._warn("broker", exc)
                    up.add_metric(["broker"], 0)
            if self.db is not None:
                try:
                    count, age = self.outbox_lag()
                    families[OUTBOX_UNPUBLISHED].add_metric([], count)
                    families[OUTBOX_OLDEST_AGE].add_metric([], age)
                    up.add_metric(["store"], 1)
                except Exception as exc:  # a store failure must not break the whole scrape
                    self._warn("store", exc)
                    up.add_metric(["store"], 0)
        return list(families.values())

    @staticmethod
    def families() -> dict[str, GaugeMetricFamily]:
        return {
            QUEUE_DEPTH: GaugeMetricFamily(
                QUEUE_DEPTH,
                "Messages waiting in a broker queue, all priority levels (exported by the "
                "gateway and the orchestrator: aggregate with max by (queue))",
                labels=["queue"],
            ),
            QUEUE_UNACKED: GaugeMetricFamily(
                QUEUE_UNACKED,
                "Messages delivered to workers and not yet acknowledged (executing or prefetched)",
            ),
            OUTBOX_UNPUBLISHED: GaugeMetricFamily(
                OUTBOX_UNPUBLISHED, "Outbox rows not yet published to the broker"
            ),
            OUTBOX_OLDEST_AGE: GaugeMetricFamily(
                OUTBOX_OLDEST_AGE,
                "Age of the oldest unpublished outbox row, 0 when there is none: the outbox lag",
            ),
            COLLECTOR_UP: GaugeMetricFamily(
                COLLECTOR_UP,
                "Whether the last read of shared state succeeded (source: broker, store)",
                labels=["source"],
            ),
        }

    # --- readings ------------------------------------------------------------------------
    def _redis(self) -> redis.Redis:
        if self._client is None:
            assert self.broker_url is not None
            self._client = redis.Redis.from_url(
                self.broker_url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
            )
        return self._client

    def known_queues(self) -> set[str]:
        """The fixed queues, this process's agent pool, and every ``agents.*`` queue that
        has a kombu binding (re-discovered every ``discovery_interval_s``)."""
        from podium.queues import agents_queue

        queues = {*FIXED_QUEUES, Queue.AGENTS_DEFAULT.value}
        with contextlib.suppress(ValueError):  # an invalid pool name fails elsewhere
            queues.add(agents_queue(self.settings.agents_pool))
        now = time.monotonic()
        if now - self._discovered_at >= self.discovery_interval_s:
            self._queues = self._discover()
            self._discovered_at = now
        return queues | self._queues

    def _discover(self) -> set[str]:
        client = self._redis()
        head = f"{self.prefix}{KOMBU_BINDING_PREFIX}"
        keys = list(client.scan_iter(match=_glob_escape(head) + "*", count=1000))
        found: set[str] = set()
        if not keys:
            return found
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.smembers(key)
        for members in pipe.execute():
            for member in members:
                raw = member.decode() if isinstance(member, bytes) else str(member)
                queue = raw.split(KOMBU_SEP)[-1]
                if queue_label(queue) != OTHER:
                    found.add(queue)
        if len(found) > MAX_QUEUES:
            log.warning("%d queues found; reporting the first %d", len(found), MAX_QUEUES)
            found = set(sorted(found)[:MAX_QUEUES])
        return found

    def queue_depths(self) -> dict[str, int]:
        queues = sorted(self.known_queues())
        pipe = self._redis().pipeline(transaction=False)
        for queue in queues:
            for key in queue_keys(queue, self.prefix):
                pipe.llen(key)
        sizes = pipe.execute()
        steps = len(KOMBU_PRIORITY_STEPS)
        return {
            queue: int(sum(sizes[i * steps : (i + 1) * steps])) for i, queue in enumerate(queues)
        }

    def outbox_lag(self) -> tuple[int, float]:
        """(unpublished rows, age in seconds of the oldest one; 0 when there is none)."""
        assert self.db is not None
        with self.db.session() as session:
            if self.db.is_postgres:
                ms = int(self.timeout_s * 1000)
                session.execute(text(f"SET LOCAL statement_timeout = {ms}"))
            count, oldest = session.execute(
                select(func.count(OutboxMessage.id), func.min(OutboxMessage.created_at)).where(
                    OutboxMessage.published_at.is_(None)
                )
            ).one()
        age = max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0
        return int(count or 0), age

    def _warn(self, source: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning.get(source, float("-inf")) >= 60:
            self._last_warning[source] = now
            log.warning("metrics: cannot read %s state: %s", source, exc)


_collectors: dict[int, StateCollector] = {}
_collectors_lock = threading.Lock()


def install_state_collector(
    settings: Settings, db: Database | None, registry: CollectorRegistry = REGISTRY
) -> StateCollector:
    """Register the state collector in ``registry`` once; later calls re-point it."""
    with _collectors_lock:
        existing = _collectors.get(id(registry))
        if existing is not None:
            existing.bind(settings, db)
            return existing
        collector = StateCollector(settings, db)
        registry.register(collector)
        _collectors[id(registry)] = collector
        return collector


def metric_names() -> Iterator[str]:
    """Family names of the state collector (for checks against dashboards)."""
    yield from (QUEUE_DEPTH, QUEUE_UNACKED, OUTBOX_UNPUBLISHED, OUTBOX_OLDEST_AGE, COLLECTOR_UP)
