"""Shared fixtures. Integration tests run the real services as subprocesses against the
machine's Redis (an isolated key prefix) and PostgreSQL (a database created and dropped here)."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, create_engine

from podium.client import PodiumClient
from podium.store.provision import drop_database, ensure_database
from tests.support.services import ensure_postgres, ensure_redis
from tests.support.stack import Stack, base_env, free_port

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
PG_SERVER = os.environ.get("PODIUM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("PODIUM_TEST_REDIS", "redis://127.0.0.1:6379/0")


def pytest_configure(config: pytest.Config) -> None:
    # The guard against LLM calls inside a transaction (podium.store.guards), for the whole
    # suite: every process reports to one file (the services a test starts inherit these),
    # and _no_llm_call_inside_a_transaction fails the test during which a report appears.
    fd, report = tempfile.mkstemp(prefix="podium-guard-", suffix=".jsonl")
    os.close(fd)
    os.environ["PODIUM_GUARD_REPORT"] = report
    os.environ["PODIUM_STRICT_GUARDS"] = "1"


@pytest.fixture(autouse=True)
def _no_llm_call_inside_a_transaction() -> Iterator[None]:
    report = Path(os.environ["PODIUM_GUARD_REPORT"])
    before = report.stat().st_size if report.exists() else 0
    yield
    if report.exists() and report.stat().st_size > before:
        with report.open(encoding="utf-8") as lines:
            lines.seek(before)
            found = [json.loads(line) for line in lines if line.strip()]
        pytest.fail(
            "an LLM call was made while a database connection was held:\n"
            + "\n".join(f"pid {v['pid']}: {v['what']}\n{v['stack']}" for v in found),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    ensure_postgres()
    url = f"{PG_SERVER}/podium_test_{uuid.uuid4().hex[:12]}"
    ensure_database(url)
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    ensure_redis()
    prefix = f"podium-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg_url: str, redis_prefix: str
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    env = base_env(
        PODIUM_DATABASE_URL=pg_url,
        PODIUM_BROKER_URL=REDIS_URL,
        PODIUM_REDIS_URL=REDIS_URL,
        PODIUM_REDIS_KEY_PREFIX=redis_prefix,
        PODIUM_ADMIN_KEY="test-admin-" + secrets.token_hex(12),
        PODIUM_HTTP_PORT=str(free_port()),
        PODIUM_LLM_PROVIDER="simulated",
        PODIUM_SIMULATED_LATENCY_MS="30",
        PODIUM_LOG_LEVEL="INFO",
        PODIUM_OUTBOX_SWEEP_S="1",
        # Scripted simulated model, a seventh pattern, and a quick decision timeout.
        PODIUM_SIMULATED_SCRIPT=str(FIXTURES / "sim_script.yaml"),
        PODIUM_PATTERNS_FILE=str(FIXTURES / "patterns_with_seventh.yaml"),
        PYTHONPATH=str(ROOT),
        PODIUM_ORCHESTRATOR_TIMEOUT_S="1.5",
        # An OpenAI endpoint nobody listens on, with the simulated provider as fallback.
        PODIUM_OPENAI_BASE_URL="http://127.0.0.1:9/v1",
        PODIUM_OPENAI_API_KEY="not-a-real-key",
        PODIUM_PROVIDER_FALLBACKS="simulated",
        PODIUM_LLM_RETRY_BASE_DELAY_S="0.05",
    )
    stack = Stack(workdir, env)
    stack.podium("migrate")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def store(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def admin(stack: Stack) -> Iterator[PodiumClient]:
    with PodiumClient(stack.url, stack.env["PODIUM_ADMIN_KEY"]) as client:
        yield client


class TenantHandle:
    def __init__(self, tenant_id: str, key: str, client: PodiumClient) -> None:
        self.id = tenant_id
        self.key = key
        self.client = client


@pytest.fixture
def make_tenant(stack: Stack, admin: PodiumClient) -> Iterator[object]:
    clients: list[PodiumClient] = []

    def make(name: str = "tenant") -> TenantHandle:
        tenant = admin.create_tenant(f"{name}-{uuid.uuid4().hex[:6]}")
        key = admin.create_key(tenant["id"])["key"]
        client = PodiumClient(stack.url, key)
        clients.append(client)
        return TenantHandle(tenant["id"], key, client)

    yield make
    for client in clients:
        client.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)
