"""The HTTP contract: SSE resume, tenant isolation (404), JSON errors (422, 413), ops routes."""

from __future__ import annotations

import httpx
import pytest

from tests.support.stack import wait_for_run


def _finished_run(t):
    thread = t.client.create_thread()
    accepted = t.client.create_run(thread["id"], "stream me please [sim latency_ms=300]")
    run = wait_for_run(t.client, accepted["id"])
    assert run["status"] == "completed"
    return thread, run


def test_sse_replays_after_the_run_and_resumes_from_last_event_id(make_tenant):
    t = make_tenant()
    _, run = _finished_run(t)
    events = list(t.client.events(run["id"]))
    types = [e.event for e in events]
    assert types[0] == "run.queued"
    assert types[-1] == "run.completed"
    for expected in (
        "run.started",
        "decision",
        "agent_call.queued",
        "agent_call.started",
        "agent_call.delta",
        "agent_call.completed",
    ):
        assert expected in types
    # Deltas are batched (fewer events than characters) and reassemble the answer.
    text = "".join(e.data["text"] for e in events if e.event == "agent_call.delta")
    assert text == run["output"]
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)
    # Resume from the middle: exactly the events after that id, in order.
    middle = len(events) // 2
    resumed = list(t.client.events(run["id"], last_event_id=events[middle].id))
    assert [e.id for e in resumed] == ids[middle + 1 :]
    decision = next(e for e in events if e.event == "decision")
    assert decision.data["rationale"]
    assert decision.data["dimensions"]["pattern"] == "direct"


def test_sse_live_stream_then_resume_mid_run(make_tenant):
    t = make_tenant()
    thread = t.client.create_thread()
    accepted = t.client.create_run(thread["id"], "slow stream [sim latency_ms=1500]")
    seen = []
    for event in t.client.events(accepted["id"]):
        seen.append(event)
        if event.event == "agent_call.delta":
            break  # the client drops mid-run
    resumed = list(t.client.events(accepted["id"], last_event_id=seen[-1].id))
    assert resumed
    assert resumed[-1].event == "run.completed"
    everything = [e.id for e in t.client.events(accepted["id"])]
    assert [e.id for e in seen] + [e.id for e in resumed] == everything


def test_another_tenants_resources_are_404_on_every_route(make_tenant, stack):
    owner, other = make_tenant("owner"), make_tenant("other")
    thread, run = _finished_run(owner)
    routes = [
        ("GET", f"/v1/threads/{thread['id']}", None),
        ("GET", f"/v1/threads/{thread['id']}/messages", None),
        ("POST", f"/v1/threads/{thread['id']}/runs", {"input": "hijack"}),
        ("GET", f"/v1/runs/{run['id']}", None),
        ("POST", f"/v1/runs/{run['id']}/cancel", None),
        ("GET", f"/v1/runs/{run['id']}/events", None),
        ("GET", f"/v1/runs/{run['id']}/orchestration", None),
    ]
    for method, path, body in routes:
        response = other.client.http.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
        # ...and the owner still can, so the 404 is about tenancy, not a broken route.
        if method == "GET":
            assert owner.client.http.request(method, path).status_code == 200, path
    # Nothing leaked into the owner's thread from the other tenant's attempt.
    assert next(m["content"] for m in owner.client.messages(thread["id"])["data"]) != "hijack"
    assert len(owner.client.messages(thread["id"])["data"]) == 2
    # Per-tenant agents: the other tenant reads its own roster, not the owner's rows.
    assert other.client.http.get("/v1/agents/assistant").status_code == 200


@pytest.mark.parametrize(
    ("path_kind", "body", "field"),
    [
        ("runs", {}, "input"),
        ("runs", {"input": ""}, "input"),
        ("runs", {"input": 42}, "input"),
        ("runs", {"input": "x", "multitask": "sometimes"}, "multitask"),
        ("runs", {"input": "x", "unexpected": True}, "unexpected"),
        ("runs", {"input": "x", "agent": "no spaces allowed"}, "agent"),
        ("threads", {"title": 7}, "title"),
        ("threads", {"metadata": "not an object"}, "metadata"),
    ],
)
def test_bad_bodies_get_422_with_json_errors(make_tenant, path_kind, body, field):
    t = make_tenant()
    if path_kind == "runs":
        thread = t.client.create_thread()
        path = f"/v1/threads/{thread['id']}/runs"
    else:
        path = "/v1/threads"
    response = t.client.http.post(path, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert any(field in d["loc"] for d in error["details"]), error


def test_unknown_pattern_and_agent_are_422(make_tenant):
    t = make_tenant()
    thread = t.client.create_thread()
    r = t.client.http.post(
        f"/v1/threads/{thread['id']}/runs", json={"input": "x", "pattern": "swarm"}
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "unknown_pattern"
    r = t.client.http.post(
        f"/v1/threads/{thread['id']}/runs", json={"input": "x", "agent": "ghost"}
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "unknown_agent"
    r = t.client.http.post(
        f"/v1/threads/{thread['id']}/runs",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_error"


def test_oversized_body_gets_413(make_tenant):
    t = make_tenant()
    thread = t.client.create_thread()
    huge = "x" * 1_100_000
    r = t.client.http.post(f"/v1/threads/{thread['id']}/runs", json={"input": huge})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_unauthenticated_and_bad_keys_get_401(stack):
    for headers in ({}, {"Authorization": "Bearer pdm_nope"}, {"Authorization": "Basic abc"}):
        r = httpx.get(f"{stack.url}/v1/agents", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"


def test_ops_routes(stack, make_tenant):
    assert httpx.get(f"{stack.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.url}/readyz").json()
    assert ready["status"] == "ready"
    assert set(ready["checks"]) == {"store", "broker", "events"}
    t = make_tenant()
    _finished_run(t)
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert (
        'podium_http_requests_total{method="POST",route="/v1/threads/{thread_id}/runs",status="202"}'
        in metrics
    )
    spec = httpx.get(f"{stack.url}/openapi.json").json()
    assert "/v1/threads/{thread_id}/runs" in spec["paths"]
    assert "/v1/runs/{run_id}/events" in spec["paths"]
    assert httpx.get(f"{stack.url}/docs").status_code == 200
    for path in ("/v1/runs/{run_id}/feedback", "/v1/insights", "/v1/patterns", "/v1/agents/{name}"):
        assert path in spec["paths"], path
    assert httpx.get(f"{stack.url}/v1/nope").json()["error"]["code"] == "not_found"
