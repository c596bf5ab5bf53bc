"""`podium dev` end to end: one process, SQLite, in-process broker, no Redis or PostgreSQL."""

from __future__ import annotations

import time

import httpx
import pytest

from podium.client import PodiumClient
from tests.conftest import base_env
from tests.support.embedded import start_embedded, stop_embedded
from tests.support.stack import free_port, wait_for_run


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = base_env(
        PODIUM_DATABASE_URL=f"sqlite:///{workdir / 'podium.db'}",
        PODIUM_ADMIN_KEY="embedded-admin-key-0123456789",
        PODIUM_HTTP_PORT=str(port),
        # Point Redis somewhere dead: embedded mode must not need it.
        PODIUM_REDIS_URL="redis://127.0.0.1:1/0",
        PODIUM_SIMULATED_LATENCY_MS="50",
    )
    proc, url = start_embedded(env, workdir)
    yield url, env["PODIUM_ADMIN_KEY"], workdir
    stop_embedded(proc)


def test_embedded_mode_end_to_end(embedded):
    url, admin_key, workdir = embedded
    with PodiumClient(url, admin_key) as admin:
        tenant = admin.create_tenant("laptop")
        key = admin.create_key(tenant["id"])["key"]
    with PodiumClient(url, key) as client:
        thread = client.create_thread("embedded")
        first = client.create_run(thread["id"], "@researcher what do we know?")
        second = client.create_run(thread["id"], "and what is missing?")
        events = [e.event for e in client.events(first["id"])]
        assert events[-1] == "run.completed"
        assert "agent_call.delta" in events
        runs = [wait_for_run(client, r["id"]) for r in (first, second)]
        assert [r["status"] for r in runs] == ["completed", "completed"]
        agents = [
            client.orchestration(r["id"])["decisions"][0]["dimensions"]["agent"] for r in runs
        ]
        assert agents == ["researcher", "researcher"]
        deadline = time.monotonic() + 10
        while not client.orchestration(first["id"])["postmortem"]:
            assert time.monotonic() < deadline, "no post-mortem in embedded mode"
            time.sleep(0.1)
        cancelled = client.create_run(thread["id"], "long [sim latency_ms=30000]")
        for event in client.events(cancelled["id"]):
            if event.event == "agent_call.started":
                break
        client.request("POST", f"/v1/runs/{cancelled['id']}/cancel")
        assert wait_for_run(client, cancelled["id"], timeout=15)["status"] == "cancelled"
    assert (workdir / "podium.db").exists()


def test_embedded_readyz_reports_in_process_broker(embedded):
    url, _, _ = embedded
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["status"] == "ready", ready
