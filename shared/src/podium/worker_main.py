"""Start one Celery-based service as its own process (orchestrator, agent-worker, learner)."""

from __future__ import annotations

import logging
import sys

from podium.logging_setup import configure_logging
from podium.metrics import serve_metrics
from podium.runtime import Runtime
from podium.service import ServiceSpec, start_background
from podium.settings import Settings, get_settings


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
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    from podium.store.db import Database

    runtime = Runtime(settings, name=spec.name, db=Database(settings, pool_size=db_pool_size))
    if spec.register_tasks is not None:
        spec.register_tasks(runtime)
    serve_metrics(settings.metrics_port)
    start_background(runtime, spec.background)
    logging.getLogger(spec.name).info(
        "starting %s on %s (pool=%s, concurrency=%d)",
        spec.name,
        ",".join(queues or spec.queues),
        pool,
        concurrency,
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
        *(argv if argv is not None else sys.argv[1:]),
    ]
    runtime.celery.worker_main(args)
