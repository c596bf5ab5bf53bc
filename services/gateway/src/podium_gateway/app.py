"""The gateway's FastAPI application (docs/architecture.md, "HTTP API"). It never calls an LLM."""

from __future__ import annotations

from fastapi import FastAPI

from podium.celery_metrics import install_state_collector
from podium.runtime import Runtime
from podium_gateway import openapi_links
from podium_gateway.errors import install_error_handlers
from podium_gateway.middleware import BodyLimitMiddleware, MetricsMiddleware
from podium_gateway.routes import (
    agents,
    health,
    learning,
    patterns,
    runs,
    tenants,
    threads,
    usage,
)
from podium_gateway.routes.health import probe_lifespan

DESCRIPTION = """Podium runs LLM agents for many tenants. Every route under /v1 needs
`Authorization: Bearer <key>`; admin routes need the admin key. Errors are JSON:
`{"error": {"code", "message", ...}}`. Another tenant's resource answers 404."""


def create_app(runtime: Runtime) -> FastAPI:
    # The lifespan runs the dependency health probe that /readyz and admission read.
    app = FastAPI(title="Podium", version="1.0.0", description=DESCRIPTION, lifespan=probe_lifespan)
    app.state.runtime = runtime
    install_error_handlers(app)
    for module in (tenants, threads, runs, usage, learning, agents, patterns, health):
        app.include_router(module.router)
    openapi_links.install(app)
    # The last one added is the outermost: metrics see every response, including 413s.
    app.add_middleware(BodyLimitMiddleware, max_bytes=runtime.settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware)
    # Queue depth and outbox lag on /metrics (read at scrape time from the broker and store).
    install_state_collector(runtime.settings, runtime.db)
    return app
