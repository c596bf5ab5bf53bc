"""Start one Celery-based service as its own process (orchestrator, agent-worker, learner).

Metrics: the Celery signal handlers of ``podium.celery_metrics`` are connected, the pool's
size is exported, the orchestrator also exports the shared state (queue depth, outbox lag),
and /metrics is served on ``PODIUM_METRICS_PORT``.

Prefork pools: a prefork (``processes``) pool runs tasks in child processes, so their metrics
must go through prometheus_client's multiprocess mode. That mode is chosen when
prometheus_client is imported, which has happened long before ``run_worker`` runs, so the
worker re-executes itself once with ``PROMETHEUS_MULTIPROC_DIR`` set: to the operator's
directory (its old ``*.db`` files wiped first, as prometheus_client requires; give each
worker its own directory), or to a fresh temporary one removed at exit. /metrics then
aggregates every process of the worker, and a child's live gauges are dropped when it exits.
The default pool (threads) needs none of this.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

from podium.celery_metrics import WORKER_SLOTS, connect_signals, install_state_collector
from podium.metrics import serve_metrics
from podium.process import prepare_process
from podium.runtime import Runtime
from podium.service import ServiceSpec, start_background
from podium.settings import Settings, get_settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Set (to the pid) by the process that re-executes itself for multiprocess mode.
_READY_ENV = "PODIUM_METRICS_MULTIPROC_READY"
# Set when the directory is a temporary one this worker created (removed at exit).
_OWNED_ENV = "PODIUM_METRICS_MULTIPROC_OWNED"
PREFORK_POOLS = frozenset({"prefork", "processes"})
# Services that also export the shared state (queue depth, outbox lag); the gateway does too.
STATE_EXPORTERS = frozenset({"orchestrator"})


def _option(argv: list[str], long: str, short: str) -> str | None:
    """The last value given to ``--long VALUE``, ``--long=VALUE``, ``-s VALUE`` or ``-sVALUE``."""
    value: str | None = None
    for index, arg in enumerate(argv):
        if arg in (long, short) and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(long + "="):
            value = arg.split("=", 1)[1]
        elif arg.startswith(short) and not arg.startswith("--") and len(arg) > len(short):
            value = arg[len(short) :].lstrip("=")
    return value


def effective_pool(pool: str, argv: list[str]) -> str:
    """The pool Celery will use: extra arguments override the service's default."""
    return _option(argv, "--pool", "-P") or pool


def effective_concurrency(concurrency: int, argv: list[str]) -> int:
    value = _option(argv, "--concurrency", "-c")
    try:
        return int(value) if value is not None else concurrency
    except ValueError:
        return concurrency


def prepare_multiprocess_metrics() -> None:
    """Make sure this process runs with PROMETHEUS_MULTIPROC_DIR set since interpreter start:
    if not, set it up and re-execute the same command (same pid). Returns only when ready."""
    if os.environ.get(_READY_ENV) == str(os.getpid()) and os.environ.get(MULTIPROC_ENV):
        path = os.environ[MULTIPROC_ENV]
        if os.environ.get(_OWNED_ENV) == "1":
            owner = os.getpid()

            def _cleanup() -> None:
                if os.getpid() == owner:  # not in a forked child
                    shutil.rmtree(path, ignore_errors=True)

            atexit.register(_cleanup)
        return
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
        os.environ.pop(_OWNED_ENV, None)
    else:
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="podium-metrics-")
        os.environ[_OWNED_ENV] = "1"
    os.environ[_READY_ENV] = str(os.getpid())
    print(
        f"prefork pool: restarting with {MULTIPROC_ENV}={os.environ[MULTIPROC_ENV]}",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    # Same interpreter, same arguments (sys.orig_argv keeps -m/-c and interpreter options).
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # noqa: S606


def metrics_registry(multiprocess: bool) -> CollectorRegistry:
    """The registry /metrics serves: the process's own, or every process's in multiprocess
    mode (prometheus_client's MultiProcessCollector over PROMETHEUS_MULTIPROC_DIR)."""
    if not multiprocess:
        return REGISTRY
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def run_worker(
    spec: ServiceSpec,
    *,
    concurrency: int,
    pool: str = "threads",
    queues: tuple[str, ...] | None = None,
    settings: Settings | None = None,
    db_pool_size: int | None = None,
    argv: list[str] | None = None,
) -> None:
    extra = list(argv if argv is not None else sys.argv[1:])
    chosen_pool = effective_pool(pool, extra)
    slots = effective_concurrency(concurrency, extra)
    multiprocess = chosen_pool in PREFORK_POOLS
    if multiprocess:
        prepare_multiprocess_metrics()
    settings = settings or get_settings()
    prepare_process(settings)
    from podium.store.db import Database

    runtime = Runtime(settings, name=spec.name, db=Database(settings, pool_size=db_pool_size))
    runtime.slots = slots
    if spec.register_tasks is not None:
        spec.register_tasks(runtime)
    connect_signals()
    registry = metrics_registry(multiprocess)
    if spec.name in STATE_EXPORTERS:
        install_state_collector(settings, runtime.db, registry)
    WORKER_SLOTS.labels(spec.name).set(slots)
    serve_metrics(settings.metrics_port, registry)
    start_background(runtime, spec.background)
    logging.getLogger(spec.name).info(
        "starting %s on %s (pool=%s, concurrency=%d)",
        spec.name,
        ",".join(queues or spec.queues),
        chosen_pool,
        slots,
    )
    args = [
        "worker",
        "--queues",
        ",".join(queues or spec.queues),
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"{spec.name}@%h",
        "--loglevel",
        settings.log_level,
        "--without-gossip",
        "--without-mingle",
        *extra,
    ]
    runtime.celery.worker_main(args)
