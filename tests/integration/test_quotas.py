"""Tenant quotas and fair dispatch against the real services (issue 6): a rate limit shared
by two gateway processes, token budgets reserved at admission under a burst, and a noisy
tenant that cannot starve quiet ones."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from podium.client import PodiumClient
from tests.support.stack import Stack, free_port, wait_for_run

FAIR_POOL = "fairtest"


@pytest.fixture(scope="module")
def second_gateway(stack: Stack) -> Iterator[str]:
    """Another gateway process on the same Redis and database."""
    env = dict(stack.env, PODIUM_HTTP_PORT=str(free_port()))
    other = Stack(stack.workdir / "gateway2", env)
    other.workdir.mkdir(exist_ok=True)
    other.start("gateway")
    try:
        yield other.url
    finally:
        other.stop()


@pytest.fixture(scope="module")
def fair_worker(stack: Stack) -> Iterator[None]:
    """A pool of its own with two slots, so calls must wait for their turn."""
    env = dict(stack.env, PODIUM_AGENTS_POOL=FAIR_POOL, PODIUM_WORKER_CONCURRENCY="2")
    pool = Stack(stack.workdir / "fair-worker", env)
    pool.workdir.mkdir(exist_ok=True)
    pool.start("agent-worker")
    try:
        yield
    finally:
        pool.stop()


def _post_runs(urls: list[str], key: str, threads: list[str], body: dict[str, Any]) -> list[Any]:
    """POST one run per thread, all at once, alternating between gateways."""

    def post(i: int) -> httpx.Response:
        url = urls[i % len(urls)]
        return httpx.post(
            f"{url}/v1/threads/{threads[i]}/runs",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )

    with concurrent.futures.ThreadPoolExecutor(len(threads)) as pool:
        return list(pool.map(post, range(len(threads))))


def _wait_all(client: PodiumClient, run_ids: list[str], timeout: float = 120) -> list[dict]:
    return [wait_for_run(client, r, timeout=timeout) for r in run_ids]


def test_limit_of_n_per_minute_admits_exactly_n_across_two_gateways(
    stack: Stack, second_gateway: str, make_tenant: Any, admin: PodiumClient
) -> None:
    t = make_tenant("rate")
    n = 12
    admin.set_limits(t.id, requests_per_minute=n)
    threads = [t.client.create_thread(f"burst {i}")["id"] for i in range(3 * n)]
    gateways = [stack.url, second_gateway]
    for url in gateways:  # both warm, so neither is still opening its pools during the burst
        httpx.get(f"{url}/readyz", timeout=30).raise_for_status()
    responses = _post_runs(gateways, t.key, threads, {"input": "hi"})
    admitted = [r for r in responses if r.status_code == 202]
    refused = [r for r in responses if r.status_code == 429]
    # Each gateway answered 3n/2 > n requests: a per-process limit would admit up to 2n in
    # all, so exactly n admitted means the two processes share one limit. Which gateway
    # admitted them is a race and not asserted.
    per_gateway = {u: sum(1 for r in responses if str(r.url).startswith(u)) for u in gateways}
    assert all(count > n for count in per_gateway.values()), per_gateway
    assert len(admitted) == n, [r.status_code for r in responses]
    assert len(refused) == 2 * n
    for r in refused:
        assert r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    usage = t.client.usage()
    assert usage["requests_per_minute"]["used"] == n
    assert usage["requests_per_minute"]["remaining"] == 0
    _wait_all(t.client, [r.json()["id"] for r in admitted])


def test_token_budget_never_overshoots_under_50_concurrent_runs(
    stack: Stack, second_gateway: str, make_tenant: Any, admin: PodiumClient, store: Engine
) -> None:
    t = make_tenant("budget")
    budget, per_run = 4000, 1000
    admin.set_limits(t.id, tokens_per_day=budget)
    threads = [t.client.create_thread(f"budget {i}")["id"] for i in range(50)]
    body = {"input": "Explain quotas in two sentences.", "pattern": "direct", "max_tokens": per_run}
    responses = _post_runs([stack.url, second_gateway], t.key, threads, body)
    admitted = [r.json()["id"] for r in responses if r.status_code == 202]
    refused = [r for r in responses if r.status_code == 429]
    # Without reservations, all 50 would pass the check at once and spend far more.
    assert 1 <= len(admitted) < 50
    assert refused and {r.json()["error"]["code"] for r in refused} == {"token_budget_exhausted"}
    runs = _wait_all(t.client, admitted)
    assert all(r["status"] == "completed" for r in runs)
    # Each run got at most its own cap, and the reservations of every run that was
    # admitted while others were still open fit in the budget.
    assert all(r["limits"]["tokens"] <= per_run for r in runs)
    spent = sum(
        r["usage"]["input_tokens"] + r["usage"]["output_tokens"] + r["usage"]["orchestrator_tokens"]
        for r in runs
    )
    assert spent <= budget
    # Settled exactly: what the tenant is charged is what its runs used; nothing stays held.
    deadline = time.monotonic() + 30
    while True:
        usage = t.client.usage()["tokens_per_day"]
        if usage["reserved"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert usage["reserved"] == 0
    assert usage["used"] == spent
    with store.connect() as conn:
        in_db = conn.execute(
            text(
                "SELECT coalesce(sum(input_tokens + output_tokens), 0) FROM agent_calls "
                "WHERE tenant_id = :t"
            ),
            {"t": t.id},
        ).scalar_one()
    assert in_db <= spent <= budget


def test_noisy_tenant_does_not_starve_quiet_ones(
    stack: Stack, fair_worker: None, make_tenant: Any, store: Engine
) -> None:
    """Two worker slots; a noisy tenant queues 16 slow calls, then three quiet tenants
    queue two each. Dispatch goes round robin over tenants: the quiet tenants' calls start
    long before the noisy backlog drains, interleaved with it."""
    noisy = make_tenant("noisy")
    quiet = [make_tenant(f"quiet{i}") for i in range(3)]
    for tenant in (noisy, *quiet):
        agent = tenant.client.get_agent("assistant")
        agent["pool"] = FAIR_POOL
        skip = {"name", "created_at", "updated_at", "warnings"}
        tenant.client.put_agent("assistant", {k: v for k, v in agent.items() if k not in skip})
    prompt = "[sim latency_ms=400] say something"
    noisy_runs = [
        noisy.client.create_run(noisy.client.create_thread()["id"], prompt, pattern="direct")
        for _ in range(16)
    ]
    time.sleep(0.5)  # the noisy backlog is queued first
    quiet_runs = [
        q.client.create_run(q.client.create_thread()["id"], prompt, pattern="direct")
        for q in quiet
        for _ in range(2)
    ]
    for tenant, run in [(noisy, r) for r in noisy_runs] + [
        (q, r) for q, r in zip([q for q in quiet for _ in range(2)], quiet_runs, strict=True)
    ]:
        assert wait_for_run(tenant.client, run["id"], timeout=120)["status"] == "completed"
    with store.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT tenant_id, started_at FROM agent_calls WHERE tenant_id = ANY(:ts) "
                "ORDER BY started_at"
            ),
            {"ts": [noisy.id, *[q.id for q in quiet]]},
        ).all()
    order = ["N" if r[0] == noisy.id else "Q" for r in rows]
    assert order.count("N") == 16 and order.count("Q") == 6
    last_quiet = max(i for i, o in enumerate(order) if o == "Q")
    # FIFO would run all 16 noisy calls first (the quiet ones at positions 16-21). Round
    # robin lets each quiet call in within a few turns of being queued.
    assert last_quiet < 14, "".join(order)
    # And the noisy tenant is not shut out either: its calls continue between them.
    first_quiet = order.index("Q")
    assert "N" in order[first_quiet : last_quiet + 1], "".join(order)


def test_concurrent_calls_cap_limits_a_tenants_calls_in_flight(
    make_tenant: Any, admin: PodiumClient, store: Engine
) -> None:
    t = make_tenant("capped")
    admin.set_limits(t.id, concurrent_calls=2)
    prompt = "[sim latency_ms=300] hello"
    runs = [
        t.client.create_run(t.client.create_thread()["id"], prompt, pattern="direct")
        for _ in range(8)
    ]
    for run in runs:
        assert wait_for_run(t.client, run["id"], timeout=120)["status"] == "completed"
    with store.connect() as conn:
        spans = conn.execute(
            text("SELECT started_at, finished_at FROM agent_calls WHERE tenant_id = :t"),
            {"t": t.id},
        ).all()
    assert len(spans) == 8
    # At no call's start were more than two of the tenant's calls running.
    peak = max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans)
    assert peak <= 2
    assert peak == 2  # and the cap is a cap, not a queue of one


def test_usage_and_limits_routes(make_tenant: Any, admin: PodiumClient, stack: Stack) -> None:
    t = make_tenant("usage")
    tenant = admin.request("PATCH", f"/v1/tenants/{t.id}", json={"limits": {"concurrent_runs": 3}})
    assert tenant["limits"]["concurrent_runs"] == 3
    assert tenant["limit_overrides"] == {"concurrent_runs": 3}
    reset = admin.request(
        "PATCH", f"/v1/tenants/{t.id}", json={"limits": {"concurrent_runs": None}}
    )
    assert reset["limit_overrides"] == {}
    assert reset["limits"]["concurrent_runs"] == int(
        stack.env.get("PODIUM_TENANT_CONCURRENT_RUNS", 200)
    )
    # A tenant key cannot change limits, and bad values are 422.
    forbidden = httpx.patch(
        f"{stack.url}/v1/tenants/{t.id}",
        json={"limits": {"concurrent_runs": 1000}},
        headers={"Authorization": f"Bearer {t.key}"},
    )
    assert forbidden.status_code == 403
    bad = admin.http.patch(f"/v1/tenants/{t.id}", json={"limits": {"concurrent_runs": -1}})
    assert bad.status_code == 422
    unknown = admin.http.patch(f"/v1/tenants/{uuid.uuid4().hex}", json={"limits": {}})
    assert unknown.status_code == 404
    usage = t.client.usage()
    assert set(usage) >= {
        "requests_per_minute",
        "concurrent_runs",
        "concurrent_calls",
        "tokens_per_day",
        "cost_per_month_usd",
    }
    assert usage["tenant_id"] == t.id


def test_concurrent_runs_limit_and_revoked_key(
    make_tenant: Any, admin: PodiumClient, stack: Stack
) -> None:
    t = make_tenant("conc")
    admin.set_limits(t.id, concurrent_runs=2)
    prompt = "[sim latency_ms=1500] slow"
    first = [
        t.client.create_run(t.client.create_thread()["id"], prompt, pattern="direct")
        for _ in range(2)
    ]
    third = t.client.http.post(
        f"/v1/threads/{t.client.create_thread()['id']}/runs", json={"input": "one more"}
    )
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "concurrent_runs_exceeded"
    assert int(third.headers["Retry-After"]) >= 1
    for run in first:
        wait_for_run(t.client, run["id"], timeout=60)
    # The slots are free again once the runs ended (settled by the orchestrator).
    deadline = time.monotonic() + 20
    while t.client.usage()["concurrent_runs"]["used"] and time.monotonic() < deadline:
        time.sleep(0.2)
    again = t.client.create_run(t.client.create_thread()["id"], "now", pattern="direct")
    wait_for_run(t.client, again["id"], timeout=60)
    # Revoked keys are refused at once.
    keys = admin.request("GET", f"/v1/tenants/{t.id}/api-keys")
    assert keys and all("key" not in k for k in keys)
    admin.http.delete(f"/v1/tenants/{t.id}/api-keys/{keys[0]['id']}")
    assert t.client.http.get("/v1/usage").status_code == 401


def test_a_revoked_key_is_refused_by_every_gateway_within_a_second(
    stack: Stack, second_gateway: str, make_tenant: Any, admin: PodiumClient
) -> None:
    t = make_tenant("revoke")
    headers = {"Authorization": f"Bearer {t.key}"}
    with httpx.Client(base_url=second_gateway, headers=headers, timeout=10) as other:
        # Both gateways have checked the key, and trust it for a moment.
        assert t.client.http.get("/v1/usage").status_code == 200
        assert other.get("/v1/usage").status_code == 200
        [key] = admin.request("GET", f"/v1/tenants/{t.id}/api-keys")
        assert admin.http.delete(f"/v1/tenants/{t.id}/api-keys/{key['id']}").status_code == 204
        revoked = time.monotonic()
        # Refused at once by the gateway that revoked it...
        assert t.client.http.get("/v1/usage").status_code == 401
        # ...and by the other within a second.
        while other.get("/v1/usage").status_code == 200:
            assert time.monotonic() - revoked < 1.0, "still accepted 1 s after revocation"
            time.sleep(0.02)
        assert time.monotonic() - revoked < 1.0
        assert other.get("/v1/usage").json()["error"]["code"] == "unauthorized"


# --- isolation audit -------------------------------------------------------------------------
# A body that passes validation on each route that takes one, so the answer is about the id.
VALID_BODIES = {
    ("POST", "/v1/threads/{thread_id}/runs"): {"input": "hijack"},
    ("POST", "/v1/runs/{run_id}/feedback"): {"rating": 1},
}
# Path parameters that are not ids: an agent name is looked up in the caller's own roster.
NOT_IDS = {"name"}


def test_every_route_with_another_tenants_id_is_404(
    stack: Stack, make_tenant: Any, admin: PodiumClient
) -> None:
    """Walks the OpenAPI document, so a route added later is covered without editing this."""
    owner, other = make_tenant("owner"), make_tenant("other")
    thread = owner.client.create_thread("private")
    run = owner.client.create_run(thread["id"], "secret", pattern="direct")
    wait_for_run(owner.client, run["id"])
    ids = {"thread_id": thread["id"], "run_id": run["id"]}
    spec = httpx.get(f"{stack.url}/openapi.json").json()
    walked = 0
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            if not params or "admin" in op.get("tags", []) or set(params) <= NOT_IDS:
                continue
            unknown = set(params) - set(ids) - NOT_IDS
            assert not unknown, f"{method} {path}: teach this test the id {unknown}"
            url = path.format(**ids)
            body = VALID_BODIES.get((method.upper(), path))
            response = other.client.http.request(method.upper(), url, json=body)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["code"] == "not_found"
            walked += 1
    assert walked >= 8
    # Admin routes refuse a tenant key whatever the id.
    for method, path in (
        ("GET", f"/v1/tenants/{owner.id}"),
        ("PATCH", f"/v1/tenants/{owner.id}"),
        ("GET", f"/v1/tenants/{owner.id}/api-keys"),
        ("POST", f"/v1/tenants/{owner.id}/api-keys"),
        ("POST", "/v1/tenants"),
    ):
        response = owner.client.http.request(method, path, json={})
        assert response.status_code == 403, (method, path, response.text)
    # The owner's run is untouched by the other tenant's attempts.
    assert owner.client.get_run(run["id"])["status"] == "completed"
