"""A small synchronous HTTP client for the v1 API, used by the CLI, the demo and the tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx


class PodiumAPIError(Exception):
    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body


@dataclass(frozen=True)
class SSEvent:
    id: str | None
    event: str
    data: dict[str, Any]


def parse_sse_lines(lines: Iterator[str]) -> Iterator[SSEvent]:
    """Parse a text/event-stream into events (comments and keepalives skipped)."""
    event_id: str | None = None
    event_type = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield SSEvent(event_id, event_type, json.loads("\n".join(data)))
            event_id, event_type, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            event_type = value
        elif name == "data":
            data.append(value)


class PodiumClient:
    def __init__(self, base_url: str, key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PodiumClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
                err = body.get("error", {})
                raise PodiumAPIError(
                    response.status_code, err.get("code", "error"), err.get("message", ""), body
                )
            except (ValueError, AttributeError):
                raise PodiumAPIError(response.status_code, "error", response.text) from None
        return response.json()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._json(self.http.request(method, path, **kwargs))

    def create_tenant(self, name: str) -> dict[str, Any]:
        return dict(self.request("POST", "/v1/tenants", json={"name": name}))

    def create_key(self, tenant_id: str, name: str | None = None) -> dict[str, Any]:
        return dict(self.request("POST", f"/v1/tenants/{tenant_id}/api-keys", json={"name": name}))

    def set_limits(self, tenant_id: str, **limits: int | float | None) -> dict[str, Any]:
        """Admin: set a tenant's limits (None returns one to the deployment default)."""
        body = {"limits": limits}
        return dict(self.request("PATCH", f"/v1/tenants/{tenant_id}", json=body))

    def usage(self) -> dict[str, Any]:
        """The calling tenant's usage against its limits."""
        return dict(self.request("GET", "/v1/usage"))

    def create_thread(self, title: str | None = None) -> dict[str, Any]:
        return dict(self.request("POST", "/v1/threads", json={"title": title}))

    def create_run(
        self,
        thread_id: str,
        prompt: str,
        *,
        agent: str | None = None,
        pattern: str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Start a run. ``options`` are further body fields: max_tokens, max_cost_usd,
        max_iterations, deadline_s, multitask."""
        body: dict[str, Any] = {"input": prompt}
        if agent:
            body["agent"] = agent
        if pattern:
            body["pattern"] = pattern
        body.update({k: v for k, v in options.items() if v is not None})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return dict(
            self.request("POST", f"/v1/threads/{thread_id}/runs", json=body, headers=headers)
        )

    def get_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/runs/{run_id}"))

    def orchestration(self, run_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/runs/{run_id}/orchestration"))

    def messages(self, thread_id: str, after: int = 0, limit: int = 100) -> dict[str, Any]:
        return dict(
            self.request(
                "GET", f"/v1/threads/{thread_id}/messages", params={"after": after, "limit": limit}
            )
        )

    def list_agents(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/agents")["data"])

    def get_agent(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/agents/{quote(name, safe='')}"))

    def put_agent(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create or replace the agent ``name`` with the whole definition ``body``."""
        return dict(self.request("PUT", f"/v1/agents/{quote(name, safe='')}", json=body))

    def delete_agent(self, name: str) -> None:
        response = self.http.delete(f"/v1/agents/{quote(name, safe='')}")
        if response.status_code >= 400:
            self._json(response)

    def patterns(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/patterns")["data"])

    def events(
        self, run_id: str, last_event_id: str | None = None, timeout: float = 120.0
    ) -> Iterator[SSEvent]:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with self.http.stream(
            "GET", f"/v1/runs/{run_id}/events", headers=headers, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            yield from parse_sse_lines(response.iter_lines())
