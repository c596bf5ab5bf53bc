"""Liveness, readiness (store, broker and Redis reachable) and Prometheus metrics.

Readiness comes from ``HealthProbe``: one background thread per dependency checks it every
``PODIUM_HEALTH_PROBE_INTERVAL_S`` with short timeouts, and requests read the cached result,
so neither /readyz nor admission ever waits on a dependency that is down. A check still
running after ``CHECK_TIMEOUT_S`` counts as a failure (a silent network, a hung server).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from podium.runtime import Runtime
from podium_gateway.errors import RETRY_AFTER_S, ApiError

router = APIRouter(tags=["ops"])
log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 1.5


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check(fn: Callable[[], None]) -> str:
    try:
        fn()
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok"


def _probe_engine(runtime: Runtime) -> Engine:
    """A separate connection for the probe, with a short connect timeout (libpq's minimum is
    2 s), so the probe never waits behind the request pool or its longer timeouts."""
    if not runtime.db.is_postgres:
        return runtime.db.engine
    return create_engine(
        runtime.db.engine.url,
        poolclass=NullPool,
        connect_args={"connect_timeout": 2, "options": "-c statement_timeout=1500"},
    )


def checks(runtime: Runtime, engine: Engine | None = None) -> dict[str, Callable[[], None]]:
    store_engine = engine or runtime.db.engine

    def store() -> None:
        if store_engine.dialect.name == "sqlite":
            # Below SQLAlchemy's transaction hooks: the embedded store opens every
            # transaction with BEGIN IMMEDIATE, a write lock a probe must not take.
            raw = store_engine.raw_connection()
            try:
                raw.cursor().execute("SELECT 1")
            finally:
                raw.close()
            return
        with store_engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def broker() -> None:
        with runtime.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=CHECK_TIMEOUT_S)

    def events() -> None:
        if not runtime.events.ping():
            raise RuntimeError("event stream did not answer")

    return {"store": store, "broker": broker, "events": events}


def readiness(runtime: Runtime) -> dict[str, str]:
    """Check every dependency now (used when no probe runs, e.g. an app without lifespan)."""
    return {name: _check(fn) for name, fn in checks(runtime).items()}


@dataclass
class _Result:
    status: str = "unknown"
    checked_at: float = 0.0
    running_since: float | None = None


class HealthProbe:
    """Background checks of the store, the broker and Redis; requests read the results."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.interval = runtime.settings.health_probe_interval_s
        self._engine = _probe_engine(runtime)
        self._checks = checks(runtime, self._engine)
        self._results = {name: _Result() for name in self._checks}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for name, fn in self._checks.items():
            thread = threading.Thread(
                target=self._loop, args=(name, fn), name=f"podium-probe-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        if self._engine is not self.runtime.db.engine:
            self._engine.dispose()

    def _loop(self, name: str, fn: Callable[[], None]) -> None:
        previous = "unknown"
        while not self._stop.is_set():
            with self._lock:
                self._results[name].running_since = time.monotonic()
            status = _check(fn)
            with self._lock:
                result = self._results[name]
                result.status, result.checked_at, result.running_since = (
                    status,
                    time.monotonic(),
                    None,
                )
            if (status == "ok") != (previous == "ok"):
                log_fn = log.info if status == "ok" else log.warning
                log_fn("dependency %s is now %s", name, status)
            previous = status
            self._stop.wait(self.interval)

    def status(self) -> dict[str, str]:
        now = time.monotonic()
        out: dict[str, str] = {}
        with self._lock:
            for name, result in self._results.items():
                if result.running_since is not None and now - result.running_since > (
                    CHECK_TIMEOUT_S
                ):
                    out[name] = f"error: no answer within {CHECK_TIMEOUT_S}s"
                else:
                    out[name] = result.status
        return out

    def wait_first(self, timeout: float) -> None:
        """Block until every check answered once (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(r.checked_at for r in self._results.values()):
                    return
            time.sleep(0.02)


def probe_status(request: Request) -> dict[str, str]:
    probe: HealthProbe | None = getattr(request.app.state, "health_probe", None)
    if probe is None:
        return readiness(request.app.state.runtime)
    return probe.status()


UNAVAILABLE_MESSAGES = {
    "store": ("store_unavailable", "the store is unreachable; nothing was accepted, retry later"),
    "broker": (
        "broker_unavailable",
        "the message broker is unreachable; nothing was accepted, retry later",
    ),
}


def unavailable(component: str, detail: str | None = None) -> ApiError:
    code, message = UNAVAILABLE_MESSAGES.get(
        component, (f"{component}_unavailable", f"{component} is unreachable; retry later")
    )
    return ApiError(
        503,
        code,
        message,
        headers={"Retry-After": str(RETRY_AFTER_S)},
        **({"detail": detail} if detail else {}),
    )


async def require_available(request: Request) -> None:
    """Admission guard: refuse new work (503 + Retry-After) while the store or the broker is
    known to be down, instead of accepting work that cannot be enqueued or persisted."""
    probe: HealthProbe | None = getattr(request.app.state, "health_probe", None)
    if probe is None:
        return  # no probe (an app without lifespan): failures map to 503 when they happen
    status = probe.status()
    for component in ("store", "broker"):
        if status.get(component, "ok") not in ("ok", "unknown"):
            raise unavailable(component)


Available = Annotated[None, Depends(require_available)]


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]
    elapsed_ms: float


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "A dependency is unavailable.",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        }
    },
)
def readyz(request: Request) -> JSONResponse:
    started = time.perf_counter()
    status = probe_status(request)
    ready = all(v == "ok" for v in status.values())
    body = {
        "status": "ready" if ready else "unavailable",
        "checks": status,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    headers = None if ready else {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics."}},
)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@asynccontextmanager
async def probe_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the health probe for the app's lifetime (first results before serving)."""
    probe = HealthProbe(app.state.runtime)
    probe.start()
    probe.wait_first(CHECK_TIMEOUT_S)
    app.state.health_probe = probe
    try:
        yield
    finally:
        app.state.health_probe = None
        probe.stop()
