"""Embedded mode (``podium dev``, docs/architecture.md, "Running it"): every service in one process,
with SQLite, the in-process broker and in-memory event streams. No Redis or PostgreSQL needed."""

from __future__ import annotations

import logging
import threading
from typing import Any

from podium.celery_metrics import connect_signals
from podium.runtime import Runtime
from podium.service import BackgroundLoop, discover_services, start_background
from podium.settings import Settings
from podium.store.migrate import upgrade

log = logging.getLogger(__name__)

REQUIRED = ("gateway", "orchestrator", "agent-worker", "learner")


def embedded_settings(settings: Settings) -> Settings:
    # One thread pool serves every queue here: a learner task must not hold a thread
    # waiting for its batch to fill (batches still form from what arrives meanwhile).
    return settings.model_copy(
        update={"mode": "embedded", "broker_url": "memory://", "learner_batch_wait_s": 0.0}
    )


class EmbeddedPodium:
    def __init__(self, settings: Settings, *, worker_threads: int = 16) -> None:
        self.settings = embedded_settings(settings)
        self.services = discover_services()
        missing = [name for name in REQUIRED if name not in self.services]
        if missing:
            raise RuntimeError(f"services not installed: {', '.join(missing)} (run `uv sync`)")
        self.runtime = Runtime(self.settings, name="podium-dev")
        self.runtime.slots = worker_threads
        self.worker_threads = worker_threads
        self._worker: Any = None
        self._stop: threading.Event | None = None

    def migrate(self) -> None:
        upgrade(self.runtime.db.engine)

    def asgi_app(self) -> Any:
        make = self.services["gateway"].make_asgi
        assert make is not None
        return make(self.runtime)

    def start_workers(self) -> None:
        queues: list[str] = []
        loops: list[BackgroundLoop] = []
        for spec in self.services.values():
            if spec.register_tasks is not None:
                spec.register_tasks(self.runtime)
            queues.extend(spec.queues)
            loops.extend(spec.background)
            loops.extend(spec.embedded_background)
        connect_signals()  # Celery task metrics, as in the distributed workers
        self._stop = start_background(self.runtime, tuple(loops))
        # A bare WorkController (not celery.apps.worker.Worker) installs no signal handlers,
        # so it can run in a thread while uvicorn owns the main thread.
        self._worker = self.runtime.celery.WorkController(
            pool_cls="threads",
            concurrency=self.worker_threads,
            queues=queues,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            hostname="podium-dev@localhost",
            loglevel=self.settings.log_level,
            ready_callback=None,
        )
        threading.Thread(target=self._worker.start, name="podium-dev-worker", daemon=True).start()
        log.info("embedded workers consuming %s", ", ".join(queues))

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._worker is not None:
            try:
                self._worker.stop(in_sighandler=False)
            except Exception as exc:  # shutting down anyway
                log.debug("worker stop: %s", exc)
        self.runtime.close()
