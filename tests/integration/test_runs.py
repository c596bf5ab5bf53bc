"""A prompt travels gateway → orchestrator → agent-worker → learner over real Redis and
PostgreSQL, each service its own process."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from sqlalchemy import text

from podium.client import PodiumAPIError
from tests.support.stack import wait_for_run


def test_tenant_and_key_creation(admin, stack):
    tenant = admin.create_tenant("acme")
    assert tenant["name"] == "acme"
    assert len(tenant["id"]) == 32
    issued = admin.create_key(tenant["id"], "ci")
    assert issued["key"].startswith("pdm_")
    assert issued["tenant_id"] == tenant["id"]
    # The key works, and the default roster exists for the new tenant.
    agents = httpx.get(
        f"{stack.url}/v1/agents", headers={"Authorization": f"Bearer {issued['key']}"}
    ).json()["data"]
    assert {"assistant", "planner", "critic", "researcher", "coder", "synthesizer"} <= {
        a["name"] for a in agents
    }


def test_api_key_is_stored_hashed(admin, store):
    tenant = admin.create_tenant("hashing")
    key = admin.create_key(tenant["id"])["key"]
    with store.connect() as conn:
        rows = conn.execute(
            text("SELECT key_hash, prefix FROM api_keys WHERE tenant_id = :t"), {"t": tenant["id"]}
        ).all()
    assert len(rows) == 1
    assert key not in rows[0].key_hash
    assert rows[0].key_hash != key
    assert len(rows[0].key_hash) == 64


def test_admin_routes_need_the_admin_key(stack, make_tenant):
    t = make_tenant()
    with pytest.raises(PodiumAPIError) as err:
        t.client.create_tenant("sneaky")
    assert err.value.status == 403
    response = httpx.post(f"{stack.url}/v1/tenants", json={"name": "x"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_thread_then_run_to_completion(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread("first")
    accepted = t.client.create_run(thread["id"], "Hello, what is 2+2?")
    assert accepted["status"] == "queued"
    assert accepted["thread_id"] == thread["id"]
    run = wait_for_run(t.client, accepted["id"])
    assert run["status"] == "completed", run
    assert "simulated" in run["output"]
    assert run["usage"]["input_tokens"] > 0
    assert run["usage"]["output_tokens"] > 0
    assert run["usage"]["agent_calls"] == 1
    messages = t.client.messages(thread["id"])["data"]
    assert [(m["kind"], m["agent"]) for m in messages] == [
        ("user_message", None),
        ("agent_message", "assistant"),
    ]
    assert messages[1]["content"] == run["output"]
    orchestration = t.client.orchestration(accepted["id"])
    [decision] = orchestration["decisions"]
    assert decision["dimensions"]["pattern"] == "direct"
    assert decision["dimensions"]["agent"] == "assistant"
    assert "default agent" in decision["rationale"]
    assert decision["input_range"] == {"from_seq": 1, "to_seq": 1}
    assert decision["outcome"]["status"] == "completed"
    # The learner's post-mortem arrives through the outbox.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not t.client.orchestration(accepted["id"])["postmortem"]:
        time.sleep(0.1)
    facts = t.client.orchestration(accepted["id"])["postmortem"]["facts"]
    assert facts["status"] == "completed"
    assert facts["pattern"] == "direct"
    assert facts["agents"] == ["assistant"]
    assert facts["output_tokens"] > 0
    assert facts["latency_ms"] > 0
    # Usage is recorded on the call: tokens and latency.
    with store.connect() as conn:
        call = conn.execute(
            text(
                "SELECT input_tokens, output_tokens, latency_ms, status"
                " FROM agent_calls WHERE run_id = :r"
            ),
            {"r": accepted["id"]},
        ).one()
    assert call.status == "succeeded"
    assert call.latency_ms > 0
    assert call.output_tokens > 0
    # A direct run's call ends the run in its own commit: three messages in all (the run's
    # start, its call, the learner's notice); the orchestrator is not woken to say "done".
    with store.connect() as conn:
        sent = conn.execute(
            text(
                "SELECT task, payload FROM outbox WHERE payload::text LIKE :r ORDER BY created_at"
            ),
            {"r": f"%{accepted['id']}%"},
        ).all()
        context = conn.execute(
            text("SELECT outcome FROM orchestration_contexts WHERE run_id = :r"),
            {"r": accepted["id"]},
        ).scalar_one()
    assert [(task, payload.get("reason")) for task, payload in sent] == [
        ("podium.orchestrator.advance_run", "run.created"),
        ("podium.fair_dispatch.submit_call", None),
        ("podium.learner.run_completed", None),
    ]
    assert decision["outcome"] == {"status": "completed", "agent_calls": 1}
    assert context == {"status": "completed", "error": None, "note": None, "guards": []}
    events = [e.event for e in t.client.events(accepted["id"])]
    assert events[-2:] == ["agent_call.completed", "run.completed"], events


def test_agent_selection_mention_then_last_agent(make_tenant):
    t = make_tenant()
    thread = t.client.create_thread()
    first = wait_for_run(t.client, t.client.create_run(thread["id"], "@coder reverse a list")["id"])
    second = wait_for_run(t.client, t.client.create_run(thread["id"], "and now sort it")["id"])
    agents = [
        t.client.orchestration(r["id"])["decisions"][0]["dimensions"]["agent"]
        for r in (first, second)
    ]
    assert agents == ["coder", "coder"]
    rationale = t.client.orchestration(second["id"])["decisions"][0]["rationale"]
    assert "last agent" in rationale


def test_forced_pattern_is_recorded(make_tenant):
    t = make_tenant()
    thread = t.client.create_thread()
    accepted = t.client.create_run(thread["id"], "hi", agent="critic", pattern="direct")
    wait_for_run(t.client, accepted["id"])
    [decision] = t.client.orchestration(accepted["id"])["decisions"]
    assert decision["source"] == "forced by request"
    assert decision["dimensions"]["agent"] == "critic"


def test_runs_on_one_thread_execute_in_order(make_tenant):
    t = make_tenant()
    thread = t.client.create_thread()
    ids = [t.client.create_run(thread["id"], f"message {n}")["id"] for n in range(4)]
    for run_id in ids:
        assert wait_for_run(t.client, run_id)["status"] == "completed"
    messages = t.client.messages(thread["id"])["data"]
    users = [m for m in messages if m["kind"] == "user_message"]
    agents = [m for m in messages if m["kind"] == "agent_message"]
    assert [m["content"] for m in users] == [f"message {n}" for n in range(4)]
    # Each answer follows its own prompt's run.
    assert [m["run_id"] for m in agents] == ids


def test_multitask_reject_gives_409(make_tenant):
    t = make_tenant()
    thread = t.client.create_thread()
    t.client.create_run(thread["id"], "slow one [sim latency_ms=3000]")
    response = t.client.http.post(
        f"/v1/threads/{thread['id']}/runs", json={"input": "second", "multitask": "reject"}
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "thread_busy"


def test_idempotency_same_body_same_run_different_body_409(make_tenant):
    t = make_tenant()
    thread = t.client.create_thread()
    key = f"idem-{uuid.uuid4()}"
    first = t.client.create_run(thread["id"], "exactly once", idempotency_key=key)
    again = t.client.create_run(thread["id"], "exactly once", idempotency_key=key)
    assert again["id"] == first["id"]
    with pytest.raises(PodiumAPIError) as err:
        t.client.create_run(thread["id"], "a different body", idempotency_key=key)
    assert err.value.status == 409
    assert err.value.code == "idempotency_conflict"
    wait_for_run(t.client, first["id"])
    users = [m for m in t.client.messages(thread["id"])["data"] if m["kind"] == "user_message"]
    assert len(users) == 1  # the repeat did not append a second prompt


def test_idempotency_under_concurrent_retries(make_tenant, stack):
    import concurrent.futures

    t = make_tenant()
    thread = t.client.create_thread()
    key = f"idem-{uuid.uuid4()}"

    def post() -> str:
        r = httpx.post(
            f"{stack.url}/v1/threads/{thread['id']}/runs",
            json={"input": "race"},
            headers={"Authorization": f"Bearer {t.key}", "Idempotency-Key": key},
            timeout=30,
        )
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: post(), range(8)))
    assert len(ids) == 1


def test_cancel_stops_a_running_call(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    accepted = t.client.create_run(thread["id"], "take your time [sim latency_ms=20000]")
    for event in t.client.events(accepted["id"]):
        if event.event == "agent_call.started":
            break
    t.client.request("POST", f"/v1/runs/{accepted['id']}/cancel")
    started = time.monotonic()
    run = wait_for_run(t.client, accepted["id"], timeout=15)
    assert run["status"] == "cancelled"
    assert time.monotonic() - started < 10  # long before the 20 s call would have finished
    # The cancelled call leaves no answer in the thread, and cancelling again is a clear 409.
    time.sleep(1.0)
    kinds = [m["kind"] for m in t.client.messages(thread["id"])["data"]]
    assert kinds == ["user_message"]
    with pytest.raises(PodiumAPIError) as err:
        t.client.request("POST", f"/v1/runs/{accepted['id']}/cancel")
    assert err.value.status == 409
    with store.connect() as conn:
        status = conn.execute(
            text("SELECT status FROM agent_calls WHERE run_id = :r"), {"r": accepted["id"]}
        ).scalar_one()
    assert status == "cancelled"


def test_cancel_a_queued_run(make_tenant):
    t = make_tenant()
    thread = t.client.create_thread()
    blocker = t.client.create_run(thread["id"], "first [sim latency_ms=1500]")
    queued = t.client.create_run(thread["id"], "second, waits for the first")
    t.client.request("POST", f"/v1/runs/{queued['id']}/cancel")
    assert wait_for_run(t.client, queued["id"])["status"] == "cancelled"
    assert wait_for_run(t.client, blocker["id"])["status"] == "completed"


def test_provider_error_fails_the_run_cleanly(make_tenant):
    t = make_tenant()
    thread = t.client.create_thread()
    run = wait_for_run(
        t.client, t.client.create_run(thread["id"], "boom [sim error=bad_request]")["id"]
    )
    assert run["status"] == "failed"
    assert run["error"]["code"] == "provider_bad_request"
