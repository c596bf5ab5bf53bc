"""The run lifecycle over the real services, PostgreSQL and Redis (and `podium dev` on
SQLite): a decision is made with no transaction open, so a cancel, an interrupt or an
unrelated write during a slow decision answers at once, and the decision is recorded as
superseded, never executed; what is decided is what each agent call ran with; a provider
that is not configured fails the run at once with a clear error."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine, create_engine, text

from podium.client import PodiumClient
from podium.store.provision import drop_database, ensure_database
from tests.conftest import FIXTURES, PG_SERVER, REDIS_URL, ROOT, TenantHandle
from tests.support.embedded import start_embedded, stop_embedded
from tests.support.inspect import finished
from tests.support.stack import Stack, base_env, free_port, wait_for_run

SLOW_DECISION = "Think hard about this [t:decide-4s]"


def _used(store: Engine, run_id: str) -> list[dict[str, Any]]:
    with store.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT agent, role, decision_seq, params, used, status FROM agent_calls "
                "WHERE run_id = :r ORDER BY created_at, id"
            ),
            {"r": run_id},
        ).mappings()
        return [
            {
                **dict(r),
                "params": r["params"] if isinstance(r["params"], dict) else json.loads(r["params"]),
                "used": r["used"] if isinstance(r["used"], dict) else json.loads(r["used"] or "{}"),
            }
            for r in rows
        ]


# --- what is decided is what runs, call by call -------------------------------------------

DECIDED = {
    "model": "sim-big",
    "temperature": 1.7,
    "max_output_tokens": 321,
    "tools": ["calculator"],
}


@pytest.mark.parametrize(
    ("marker", "pattern", "calls"),
    [
        ("direct", "direct", [("answer", "coder")]),
        ("handoff", "handoff", [("answer", "assistant"), ("answer", "coder")]),
        (
            "critic",
            "critic_loop",
            [
                ("producer", "coder"),
                ("critic", "critic"),
                ("producer", "coder"),
                ("critic", "critic"),
            ],
        ),
        (
            "team",
            "parallel_team",
            [
                ("member", "researcher"),
                ("member", "coder"),
                ("member", "critic"),
                ("merge", "synthesizer"),
            ],
        ),
        ("pipeline", "pipeline", [("stage", "coder")]),
        (
            "plan",
            "plan_execute",
            [
                ("planner", "planner"),
                ("executor", "assistant"),
                ("executor", "coder"),
                ("executor", "coder"),
            ],
        ),
    ],
)
def test_what_is_decided_is_what_each_call_runs_with(make_tenant, store, marker, pattern, calls):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], f"Do the thing [t:dx-{marker}]")
    assert run["status"] == "completed", run
    decisions = {d["seq"]: d for d in run["orchestration"]["decisions"]}
    assert decisions[1]["dimensions"]["pattern"] == pattern
    agents = {a["name"]: a for a in t.client.list_agents()}
    rows = _used(store, run["id"])
    assert [(c["role"], c["agent"]) for c in rows] == calls
    for call in rows:
        decision = decisions[call["decision_seq"]]
        decided = decision["dimensions"]["parameters"]
        own = [x for x in agents[call["agent"]]["tools"] if x not in ("handoff", "delegate")]
        expected = {
            "model": decided["model"],
            "temperature": decided["temperature"],
            "max_output_tokens": decided["max_output_tokens"],
            "tools": [x for x in own if x in decided["tools"]],
        }
        assert call["used"] == expected, (call["role"], call["agent"], decision["dimensions"])
        assert {k: call["params"][k] for k in expected} == expected
        assert decision["dimensions"]["pattern"] == pattern  # checkpoints and handoffs too
    if marker == "plan":
        checkpoints = [d for d in decisions.values() if d["dimensions"]["kind"] == "checkpoint"]
        assert [d["dimensions"]["action"] for d in checkpoints] == ["reroute", "reroute"]
        # The checkpoint kept the plan's model and temperature and set its own max and tools.
        assert checkpoints[0]["dimensions"]["parameters"] == {
            **DECIDED,
            "max_output_tokens": 222,
            "tools": [],
        }
        assert [c["decision_seq"] for c in rows] == [1, 1, 2, 3]
    if marker == "handoff":
        assert decisions[2]["source"] == "agent handoff"
        assert decisions[2]["dimensions"]["parameters"] == DECIDED


# --- a slow decision on the distributed stack ---------------------------------------------


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose Orchestrator agent may take 10 s, with no fallback provider (a
    misconfigured agent must fail, not be answered by the simulated fallback)."""
    url = f"{PG_SERVER}/podium_slow_{uuid.uuid4().hex[:10]}"
    ensure_database(url)
    prefix = f"podium-test-slow-{uuid.uuid4().hex[:8]}:"
    env = base_env(
        PODIUM_DATABASE_URL=url,
        PODIUM_BROKER_URL=REDIS_URL,
        PODIUM_REDIS_URL=REDIS_URL,
        PODIUM_REDIS_KEY_PREFIX=prefix,
        PODIUM_ADMIN_KEY="slow-admin-" + secrets.token_hex(12),
        PODIUM_HTTP_PORT=str(free_port()),
        PODIUM_LLM_PROVIDER="simulated",
        PODIUM_SIMULATED_LATENCY_MS="30",
        PODIUM_SIMULATED_SCRIPT=str(FIXTURES / "sim_script.yaml"),
        PODIUM_ORCHESTRATOR_TIMEOUT_S="10",
        PODIUM_OUTBOX_SWEEP_S="1",
        PYTHONPATH=str(ROOT),
    )
    stack = Stack(tmp_path_factory.mktemp("slow-stack"), env)
    stack.podium("migrate")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()
        drop_database(url)


@pytest.fixture(scope="module")
def slow(slow_stack: Stack) -> Iterator[TenantHandle]:
    with PodiumClient(slow_stack.url, slow_stack.env["PODIUM_ADMIN_KEY"]) as admin:
        tenant = admin.create_tenant("slow")
        key = admin.create_key(tenant["id"])["key"]
    with PodiumClient(slow_stack.url, key) as client:
        yield TenantHandle(tenant["id"], key, client)


@pytest.fixture(scope="module")
def slow_store(slow_stack: Stack) -> Iterator[Engine]:
    engine = create_engine(slow_stack.env["PODIUM_DATABASE_URL"])
    yield engine
    engine.dispose()


def _timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def _superseded_alone(client: PodiumClient, store: Engine, run_id: str) -> dict[str, Any]:
    run = wait_for_run(client, run_id, timeout=30)
    assert run["status"] == "cancelled", run
    # The run ended at once; the decision under way is recorded when it comes back.
    deadline = time.monotonic() + 10
    while not (decisions := client.orchestration(run_id)["decisions"]):
        assert time.monotonic() < deadline, "the slow decision was never recorded"
        time.sleep(0.1)
    [decision] = decisions
    assert decision["outcome"]["status"] == "superseded", decision
    assert "cancelled" in decision["outcome"]["reason"]
    assert decision["latency_ms"] >= 3500  # it really was the slow decision
    assert decision["input_tokens"] > 0  # paid for, and recorded as such
    assert _used(store, run_id) == []  # and nothing it decided was dispatched
    return decision


def test_cancel_during_a_slow_decision_answers_at_once_and_supersedes_it(slow, slow_store):
    thread = slow.client.create_thread()
    run = slow.client.create_run(thread["id"], SLOW_DECISION)
    time.sleep(1.0)  # the orchestrator is deciding now
    response, elapsed = _timed(lambda: slow.client.http.post(f"/v1/runs/{run['id']}/cancel"))
    assert response.status_code == 202, response.text
    assert elapsed < 0.5, elapsed
    assert slow.client.get_run(run["id"])["status"] in ("queued", "cancelled")
    _superseded_alone(slow.client, slow_store, run["id"])
    # Cancelling again is a defined answer, not an error of the store.
    again = slow.client.http.post(f"/v1/runs/{run['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "run_finished"


def test_interrupt_during_a_slow_decision_answers_at_once_and_supersedes_it(slow, slow_store):
    thread = slow.client.create_thread()
    first = slow.client.create_run(thread["id"], SLOW_DECISION)
    time.sleep(1.0)
    second, elapsed = _timed(
        lambda: slow.client.create_run(thread["id"], "Never mind, hello", multitask="interrupt")
    )
    assert elapsed < 0.5, elapsed
    _superseded_alone(slow.client, slow_store, first["id"])
    assert wait_for_run(slow.client, second["id"])["status"] == "completed"


def test_other_writes_during_a_slow_decision_do_not_wait(slow):
    thread = slow.client.create_thread()
    run = slow.client.create_run(thread["id"], SLOW_DECISION)
    time.sleep(1.0)
    timings = [_timed(lambda: slow.client.create_thread("meanwhile"))[1] for _ in range(5)]
    assert max(timings) < 0.5, timings
    assert wait_for_run(slow.client, run["id"], timeout=30)["status"] == "completed"


def test_an_agent_whose_provider_is_not_configured_fails_the_run_within_5_s(slow):
    agent = slow.client.put_agent(
        "claude", {"description": "Anthropic's model.", "provider": "anthropic", "model": "c-1"}
    )
    assert [w["code"] for w in agent["warnings"]] == ["provider_not_configured"]
    thread = slow.client.create_thread()
    started = time.monotonic()
    accepted = slow.client.create_run(thread["id"], "Hello", agent="claude", pattern="direct")
    run = wait_for_run(slow.client, accepted["id"], timeout=5)
    assert time.monotonic() - started < 5
    assert run["status"] == "failed"
    assert run["error"]["code"] == "provider_not_configured"
    assert "anthropic" in run["error"]["message"]
    assert "PODIUM_ANTHROPIC_API_KEY is not set" in run["error"]["message"]
    failed = [e for e in slow.client.events(accepted["id"]) if e.event == "agent_call.failed"]
    assert "PODIUM_ANTHROPIC_API_KEY" in failed[0].data["error"]["message"]


# --- podium dev (SQLite) --------------------------------------------------------------------


def test_in_podium_dev_an_unrelated_write_during_a_slow_decision_answers_at_once(tmp_path):
    env = base_env(
        PODIUM_DATABASE_URL=f"sqlite:///{tmp_path / 'podium.db'}",
        PODIUM_ADMIN_KEY="dev-admin-key-0123456789abcdef",
        PODIUM_HTTP_PORT=str(free_port()),
        PODIUM_SIMULATED_LATENCY_MS="0",
        PODIUM_SIMULATED_SCRIPT=str(FIXTURES / "sim_script.yaml"),
        PODIUM_ORCHESTRATOR_TIMEOUT_S="10",
        PYTHONPATH=str(ROOT),
    )
    proc, url = start_embedded(env, tmp_path)
    try:
        with PodiumClient(url, env["PODIUM_ADMIN_KEY"]) as admin:
            tenant = admin.create_tenant("dev")
            key = admin.create_key(tenant["id"])["key"]
        with PodiumClient(url, key) as client:
            thread = client.create_thread()
            run = client.create_run(thread["id"], SLOW_DECISION)
            time.sleep(1.0)
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
                http.post("/v1/threads", json={})  # a warm connection
                timings = []
                for _ in range(5):
                    response, elapsed = _timed(lambda: http.post("/v1/threads", json={}))
                    assert response.status_code == 201
                    timings.append(elapsed)
            assert max(timings) < 0.1, timings
            assert client.get_run(run["id"])["status"] == "queued"  # still deciding
            assert wait_for_run(client, run["id"], timeout=30)["status"] == "completed"
    finally:
        stop_embedded(proc)
