"""Fixtures of the fault tests (docs/reliability.md): real processes, killed and
restarted; private Redis and PostgreSQL servers for the outage tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from podium.store.provision import drop_database
from tests.faults.harness import (
    REDIS_URL,
    RESULTS,
    Tenant,
    clean_redis_prefix,
    fault_env,
    new_database_url,
    start_stack,
)
from tests.support.services import ensure_postgres, ensure_redis
from tests.support.stack import Stack


# Module scope: each stack holds up to ~80 PostgreSQL connections (four services, pools of
# 10 + 10), and the machine's server allows 100, shared with other test sessions; a stack
# must be gone before the next module starts its own.
@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A whole stack on the machine's Redis (own key prefix) and PostgreSQL (own database),
    tuned for fast recovery (harness.FAST_RECOVERY). Tests kill and restart its processes."""
    ensure_postgres()
    ensure_redis()
    db = new_database_url()
    prefix = f"podium-fault-{uuid.uuid4().hex[:10]}:"
    stack = start_stack(tmp_path_factory.mktemp("fault-stack"), fault_env(db, REDIS_URL, prefix))
    try:
        yield stack
    finally:
        stack.stop()
        drop_database(db)
        clean_redis_prefix(REDIS_URL, prefix)


@pytest.fixture
def fault_tenant(fault_stack: Stack) -> Iterator[Tenant]:
    tenant = Tenant(fault_stack)
    yield tenant
    tenant.close()


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The gateway alone (its own database and key prefix): what the hostile-input tests
    talk to. Runs they create stay queued; nothing else is exercised."""
    ensure_postgres()
    ensure_redis()
    db = new_database_url()
    prefix = f"podium-api-{uuid.uuid4().hex[:10]}:"
    stack = start_stack(
        tmp_path_factory.mktemp("api-stack"), fault_env(db, REDIS_URL, prefix), "gateway"
    )
    try:
        yield stack
    finally:
        stack.stop()
        drop_database(db)
        clean_redis_prefix(REDIS_URL, prefix)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("fault tests: measured counts")
    for report in RESULTS:
        terminalreporter.write_line(report.line())
