"""(h) The negative control: the harness of (a) must be able to fail. With early
acknowledgement (``PODIUM_UNSAFE_EARLY_ACK``, test only) and the reaper off, the messages a
SIGKILLed worker held are gone for good, and the same harness reports runs that never end.
(That the unsafe setting is refused without PODIUM_ALLOW_UNSAFE=1 is tests/unit's.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from podium.store.provision import drop_database
from tests.faults.harness import (
    CONTROL_WINDOW_S,
    REDIS_URL,
    Tenant,
    clean_redis_prefix,
    fault_env,
    kill_agent_worker_mid_flight,
    new_database_url,
    record,
    start_stack,
    verdict,
)
from tests.support.services import ensure_postgres, ensure_redis
from tests.support.stack import Stack

UNSAFE = {
    "PODIUM_UNSAFE_EARLY_ACK": "true",
    "PODIUM_ALLOW_UNSAFE": "1",
    "PODIUM_REAPER_ENABLED": "false",
}


@pytest.fixture
def unsafe_stack(tmp_path: Path) -> Iterator[Stack]:
    ensure_postgres()
    ensure_redis()
    db = new_database_url()
    prefix = f"podium-unsafe-{uuid.uuid4().hex[:8]}:"
    stack: Stack | None = None
    try:
        stack = start_stack(tmp_path / "stack", fault_env(db, REDIS_URL, prefix, **UNSAFE))
        yield stack
    finally:
        if stack is not None:
            stack.stop()
        drop_database(db)
        clean_redis_prefix(REDIS_URL, prefix)


def test_h_negative_control_harness_detects_loss(unsafe_stack: Stack):
    tenant = Tenant(unsafe_stack)
    try:
        report = kill_agent_worker_mid_flight(
            unsafe_stack, tenant, "h_negative_control_early_ack", window_s=CONTROL_WINDOW_S
        )
    finally:
        tenant.close()
    problems = verdict(report)
    report.notes["verdict"] = problems
    record(report)
    assert report.unfinished > 0, f"the harness saw no loss: {report.line()}"
    assert any("never finished" in p for p in problems), problems
