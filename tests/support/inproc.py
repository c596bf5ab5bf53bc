"""Podium in-process on SQLite, for unit tests that drive the real lifecycle, the real
orchestrator step and the real agent worker with the simulated model (nothing faked but the
model): a runtime, a tenant with the default roster, and a direct run stepped once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from podium.lifecycle import runs as run_lifecycle
from podium.lifecycle.admission import RunRequest
from podium.lifecycle.threads import create_thread
from podium.messages import AdvanceRun
from podium.roster import DEFAULT_AGENT, DEFAULT_ROSTER
from podium.runtime import Runtime
from podium.settings import Settings
from podium.store import Agent, AgentCall, Tenant, new_id, utcnow
from podium.store.migrate import upgrade
from podium_orchestrator.step import advance


def make_runtime(tmp_path: Path, **settings: Any) -> Runtime:
    values: dict[str, Any] = {
        "mode": "embedded",
        "database_url": f"sqlite:///{tmp_path / 'podium.db'}",
        "broker_url": "memory://",
        "llm_provider": "simulated",
        "simulated_latency_ms": 0,
        **settings,
    }
    rt = Runtime(Settings(_env_file=None, **values), name="test")  # type: ignore[call-arg]
    upgrade(rt.db.engine)
    return rt


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = make_runtime(tmp_path)
    try:
        yield rt
    finally:
        rt.close()


def make_tenant(runtime: Runtime) -> str:
    with runtime.db.session() as session:
        tenant = Tenant(name="t", default_agent=DEFAULT_AGENT, limits={})
        session.add(tenant)
        session.flush()
        for spec in DEFAULT_ROSTER:
            session.add(Agent(tenant_id=tenant.id, **spec))
        return tenant.id


def direct_run(
    runtime: Runtime, prompt: str = "What is 2+2?", tenant_id: str | None = None
) -> tuple[str, str]:
    """A direct run, stepped once by the real orchestrator: its call is pending."""
    tenant_id = tenant_id or make_tenant(runtime)
    thread = create_thread(runtime, tenant_id, title="t", metadata={})
    run_id = new_id()
    run_lifecycle.admit(
        runtime,
        tenant_id,
        thread.id,
        RunRequest(
            input=prompt,
            agent=None,
            pattern="direct",
            multitask="reject",
            idempotency_key=None,
            request_hash="h",
            deadline_at=utcnow() + timedelta(minutes=5),
            limits={},
        ),
        run_id=run_id,
        token_budget=20_000,
    )
    advance(runtime, AdvanceRun(run_id=run_id, reason="run.created"))
    with runtime.db.read() as session:
        call_id = session.scalars(select(AgentCall.id).where(AgentCall.run_id == run_id)).one()
    return run_id, call_id
