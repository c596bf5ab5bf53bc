"""OpenAPI links: how the id an operation returns feeds the operations that take it (a new
thread's id into its routes, a new run's id into the run routes), so a client generator or a
stateful fuzzer can walk from creation to use. Targets are named by method and path and
resolved to their operation ids here, so renaming a route function cannot break a link."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

# (method, path, status) of the source -> (method, path) of each target, the path parameter
# it fills, and which field of the source's response body fills it.
LINKS: dict[tuple[str, str, str], list[tuple[str, str, str, str]]] = {
    ("post", "/v1/threads", "201"): [
        ("get", "/v1/threads/{thread_id}", "thread_id", "id"),
        ("get", "/v1/threads/{thread_id}/messages", "thread_id", "id"),
        ("post", "/v1/threads/{thread_id}/runs", "thread_id", "id"),
    ],
    ("post", "/v1/threads/{thread_id}/runs", "202"): [
        ("get", "/v1/runs/{run_id}", "run_id", "id"),
        ("post", "/v1/runs/{run_id}/cancel", "run_id", "id"),
        ("post", "/v1/runs/{run_id}/resume", "run_id", "id"),
        ("get", "/v1/runs/{run_id}/orchestration", "run_id", "id"),
        ("get", "/v1/runs/{run_id}/events", "run_id", "id"),
        ("post", "/v1/runs/{run_id}/feedback", "run_id", "id"),
        ("get", "/v1/threads/{thread_id}", "thread_id", "thread_id"),
    ],
}


def with_links(spec: dict[str, Any]) -> dict[str, Any]:
    paths = spec["paths"]
    for (method, path, status), targets in LINKS.items():
        links: dict[str, Any] = {}
        for t_method, t_path, parameter, field in targets:
            operation_id = paths[t_path][t_method]["operationId"]
            name = "".join(part.title() for part in operation_id.split("_v1_")[0].split("_"))
            links[name] = {
                "operationId": operation_id,
                "parameters": {parameter: f"$response.body#/{field}"},
                "description": f"`{field}` of the response is `{parameter}` of "
                f"{t_method.upper()} {t_path}.",
            }
        paths[path][method]["responses"][status]["links"] = links
    return spec


def install(app: FastAPI) -> None:
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_links(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
