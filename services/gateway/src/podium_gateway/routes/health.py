"""Liveness, readiness (store, broker and Redis reachable) and Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from podium.runtime import Runtime
from podium_gateway.auth import RuntimeDep

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check(fn: Callable[[], None]) -> str:
    try:
        fn()
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"[:300]
    return "ok"


def readiness(runtime: Runtime) -> dict[str, str]:
    def store() -> None:
        with runtime.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def broker() -> None:
        with runtime.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)

    def events() -> None:
        if not runtime.events.ping():
            raise RuntimeError("event stream did not answer")

    return {"store": _check(store), "broker": _check(broker), "events": _check(events)}


@router.get("/readyz")
def readyz(runtime: RuntimeDep) -> JSONResponse:
    started = time.perf_counter()
    checks = readiness(runtime)
    ready = all(v == "ok" for v in checks.values())
    body = {
        "status": "ready" if ready else "unavailable",
        "checks": checks,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
