"""A complete run through a real model: the services as separate processes, the `openai`
provider pointed at llama-cpp-python's server with Gemma 3 270M, for both the Orchestrator
agent's decision and the agent call."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from podium.client import PodiumClient
from podium.store.provision import drop_database, ensure_database
from tests.conftest import FIXTURES, PG_SERVER, REDIS_URL, base_env
from tests.realllm.conftest import LlamaServer
from tests.support.services import ensure_postgres, ensure_redis
from tests.support.stack import Stack, free_port, wait_for_run

VALID_PATTERNS = {"direct", "handoff"}


@pytest.fixture(scope="module")
def real_stack(
    llama_server: LlamaServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    ensure_postgres()
    ensure_redis()
    db_url = f"{PG_SERVER}/podium_real_{uuid.uuid4().hex[:10]}"
    prefix = f"podium-real-{uuid.uuid4().hex[:8]}:"
    ensure_database(db_url)
    env = base_env(
        PODIUM_DATABASE_URL=db_url,
        PODIUM_BROKER_URL=REDIS_URL,
        PODIUM_REDIS_URL=REDIS_URL,
        PODIUM_REDIS_KEY_PREFIX=prefix,
        PODIUM_ADMIN_KEY="real-admin-" + secrets.token_hex(12),
        PODIUM_HTTP_PORT=str(free_port()),
        PODIUM_LLM_PROVIDER="openai",
        PODIUM_OPENAI_BASE_URL=llama_server.base_url,
        PODIUM_OPENAI_API_KEY="not-needed",
        PODIUM_LLM_MODEL=llama_server.model,
        # The 270M model only produces tool calls when one is forced.
        PODIUM_ORCHESTRATOR_TOOL_CHOICE="choose_pattern",
        PODIUM_ORCHESTRATOR_MAX_OUTPUT_TOKENS="300",
        PODIUM_ORCHESTRATOR_TIMEOUT_S="120",
        # A decision by the CPU-bound model takes 30-40 s here: longer than the reaper's
        # default stall (30 s), after which it would step the still-queued run a second time
        # (a duplicate decision, recorded as superseded). This test is about the model.
        PODIUM_REAPER_STALL_S="300",
        PODIUM_PATTERNS_FILE=str(FIXTURES / "patterns_single_agent.yaml"),
        PODIUM_WORKER_CONCURRENCY="2",
    )
    stack = Stack(tmp_path_factory.mktemp("real-stack"), env)
    stack.podium("migrate")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        drop_database(db_url)
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


def test_a_complete_run_through_a_real_model(real_stack: Stack) -> None:
    with PodiumClient(real_stack.url, real_stack.env["PODIUM_ADMIN_KEY"]) as admin:
        tenant = admin.create_tenant("real")
        key = admin.create_key(tenant["id"])["key"]
    with PodiumClient(real_stack.url, key, timeout=120) as client:
        client.put_agent(
            "brief",
            {
                "description": "Answers in one short sentence.",
                "instructions": "Answer in one short sentence.",
                "max_output_tokens": 48,
            },
        )
        thread = client.create_thread("real model")
        started = time.monotonic()
        accepted = client.create_run(thread["id"], "@brief What is the capital of France?")
        deltas = [
            e for e in client.events(accepted["id"], timeout=300) if e.event == "agent_call.delta"
        ]
        run = wait_for_run(client, accepted["id"], timeout=300)
        elapsed = time.monotonic() - started
        orchestration = client.orchestration(accepted["id"])
    assert run["status"] == "completed", run
    assert run["output"] and run["output"].strip()
    assert deltas, "the answer was streamed"
    [decision] = orchestration["decisions"]
    if decision["source"] == "fallback":
        assert decision["fallback"], "a fallback records its reason"
    else:
        assert decision["source"] == "orchestrator agent"
        assert decision["dimensions"]["pattern"] in VALID_PATTERNS
        assert decision["rationale"].strip()
        assert decision["input_tokens"] > 0
    assert decision["dimensions"]["agent"] == "brief"
    print(
        f"\nreal run: {elapsed:.1f}s; decision {decision['source']} "
        f"({decision['dimensions']['pattern']}, {decision['fallback']}, "
        f"{decision['latency_ms']:.0f} ms, "
        f"{decision['input_tokens']} tokens in); answer: {run['output']!r}"
    )
