"""Every fallback cause gives a recorded fallback decision and a finished run; every guard
trips, is recorded, and leaves the run in a clean state (docs/architecture.md, "Decisions" and
"Guarantees")."""

from __future__ import annotations

import itertools
import time

import pytest

from podium.client import PodiumAPIError, PodiumClient
from tests.conftest import FIXTURES, ROOT, base_env
from tests.support.embedded import start_embedded, stop_embedded
from tests.support.inspect import calls_of, finished, roles
from tests.support.stack import free_port, wait_for_run


@pytest.mark.parametrize(
    ("marker", "reason"),
    [
        ("[t:invalid]", "invalid_output: unknown pattern 'swarm'"),
        (
            "[t:no-rationale]",
            "invalid_output: choose_pattern: 'rationale' must be a non-empty string",
        ),
        ("[t:no-tool]", "invalid_output: no tool was called"),
        ("[t:slow-decision]", "timeout: the decision took"),
        ("[t:decision-error]", "provider_error:"),
    ],
)
def test_each_fallback_cause_is_recorded_and_the_run_finishes(make_tenant, store, marker, reason):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], f"Please help {marker}")
    assert run["status"] == "completed"
    [decision] = run["orchestration"]["decisions"]
    assert decision["source"] == "fallback"
    assert decision["fallback"].startswith(reason), decision["fallback"]
    assert decision["dimensions"]["pattern"] == "direct"
    assert decision["dimensions"]["agent"] == "assistant"
    assert "Fallback to 'direct'" in decision["rationale"]
    assert roles(calls_of(store, run["id"])) == [("answer", "assistant")]


def test_token_cap_holds_the_run_and_resume_doubles_it(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    accepted = t.client.create_run(
        thread["id"], "Draft and review", pattern="critic_loop", max_tokens=60
    )
    run = _wait_status(t.client, accepted["id"], "budget_hold")
    assert run["guards"][0]["guard"] == "token_cap"
    assert run["limits"]["tokens"] == 60
    assert roles(calls_of(store, accepted["id"])) == [
        ("producer", "assistant")
    ]  # nothing after the cap
    caps = [60]
    for _ in range(10):
        response = t.client.request("POST", f"/v1/runs/{accepted['id']}/resume")
        assert response["id"] == accepted["id"]
        caps.append(t.client.get_run(accepted["id"])["limits"]["tokens"])
        run = _wait_status(t.client, accepted["id"], ("budget_hold", "completed"))
        if run["status"] == "completed":
            break
    assert run["status"] == "completed"
    assert all(b == 2 * a for a, b in itertools.pairwise(caps))  # "proceed doubles it"
    assert len(calls_of(store, accepted["id"])) == 4


def test_cost_cap_holds_the_run(make_tenant):
    t = make_tenant()
    thread = t.client.create_thread()
    accepted = t.client.create_run(
        thread["id"], "Costly", pattern="critic_loop", max_cost_usd=0.000001
    )
    run = _wait_status(t.client, accepted["id"], "budget_hold")
    assert run["guards"][0]["guard"] == "cost_cap"
    assert run["limits"]["cost_usd"] == pytest.approx(0.000001)


def test_iteration_cap_holds_then_resumes(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    accepted = t.client.create_run(thread["id"], "Loop", pattern="critic_loop", max_iterations=2)
    run = _wait_status(t.client, accepted["id"], "budget_hold")
    assert run["guards"][0]["guard"] == "iteration_cap"
    assert len(calls_of(store, accepted["id"])) == 2
    t.client.request("POST", f"/v1/runs/{accepted['id']}/resume")
    run = wait_for_run(t.client, accepted["id"])
    assert run["status"] == "completed"
    assert run["limits"]["iterations"] == 4


def test_resume_of_a_run_not_on_hold_is_409(make_tenant):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "quick")
    with pytest.raises(PodiumAPIError) as err:
        t.client.request("POST", f"/v1/runs/{run['id']}/resume")
    assert err.value.status == 409
    assert err.value.code == "not_on_hold"


def test_deadline_fails_a_stuck_run(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    started = time.monotonic()
    accepted = t.client.create_run(thread["id"], "slow [sim latency_ms=20000]", deadline_s=1)
    run = wait_for_run(t.client, accepted["id"], timeout=15)
    assert time.monotonic() - started < 10
    assert run["status"] == "failed"
    assert run["error"]["code"] == "deadline_exceeded"
    assert [g["guard"] for g in run["guards"]] == ["deadline"]
    assert [c["status"] for c in calls_of(store, accepted["id"])] == ["cancelled"]


def test_retry_with_backoff_then_success(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "sometimes fails [t:flaky]")
    assert run["status"] == "completed"
    [call] = calls_of(store, run["id"])
    retries = call["error"]["retries"]
    assert [(r["attempt"], r["kind"]) for r in retries] == [(0, "server")]


def test_fallback_provider_chain(make_tenant, store):
    t = make_tenant()
    t.client.put_agent(
        "remote",
        {
            "description": "on OpenAI",
            "instructions": "Answer.",
            "provider": "openai",
            "model": "gpt-4o-mini",
        },
    )
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "@remote hello")
    assert run["status"] == "completed"
    [call] = calls_of(store, run["id"])
    assert call["provider"] == "simulated"  # the configured fallback answered
    kinds = {(r["provider"], r["kind"]) for r in call["error"]["retries"]}
    assert kinds == {("openai", "connection")}
    assert len(call["error"]["retries"]) == 3  # retried with backoff before falling back


def test_an_agent_whose_provider_has_no_key_fails_at_once(make_tenant, store, stack):
    """No Anthropic key in the stack: the call fails on its first try with an error naming
    the variable, instead of being redelivered until the reaper calls it lost (minutes)."""
    if stack.env.get("ANTHROPIC_API_KEY"):
        pytest.skip("the stack's environment has an Anthropic key")
    t = make_tenant()
    t.client.put_agent(
        "keyless",
        {"instructions": "Answer.", "provider": "anthropic", "model": "claude-sonnet-4-5"},
    )
    thread = t.client.create_thread()
    started = time.monotonic()
    # Well below the reaper's lease (30 s), which a lost call needs at least once.
    run = finished(t.client, thread["id"], "@keyless hello", timeout=20)
    assert time.monotonic() - started < 20
    assert run["status"] == "failed"
    assert run["error"]["code"] == "provider_not_configured", run["error"]
    [call] = calls_of(store, run["id"])
    assert call["status"] == "failed"
    # Not retried on the fallback either: the agent asked for Anthropic.
    assert call["error"]["message"] == (
        "anthropic: not_configured: PODIUM_ANTHROPIC_API_KEY is not set"
    )


def test_every_provider_failing_gives_a_clean_failed_run(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "doomed [sim error=server]")
    assert run["status"] == "failed"
    assert run["error"]["code"] == "provider_server"
    [call] = calls_of(store, run["id"])
    assert len(call["error"]["attempts"]) == 3


def test_same_input_and_state_give_the_same_decision(make_tenant):
    # Two tenants with the same (empty) learned state; within one tenant the first run would
    # already have changed it.
    decisions = []
    for _ in range(2):
        t = make_tenant()
        thread = t.client.create_thread()
        t.client.create_run(thread["id"], "Some earlier context about queues")
        run = finished(t.client, thread["id"], "Compare Redis and RabbitMQ")
        d = run["orchestration"]["decisions"][0]
        decisions.append((d["dimensions"], d["rationale"], d["source"], d["input_tokens"]))
    assert decisions[0] == decisions[1]
    assert decisions[0][0]["pattern"] == "parallel_team"


def test_later_decisions_do_not_grow_with_the_thread(make_tenant):
    """The first decision sees the thread, later ones only the delta."""
    t = make_tenant()
    measured = {}
    for history in (1, 12):
        thread = t.client.create_thread()
        for n in range(history):
            wait_for_run(
                t.client,
                t.client.create_run(thread["id"], f"background fact {n}: " + "x" * 200)["id"],
            )
        run = finished(t.client, thread["id"], "Roll out the change [t:decide-plan]")
        first, *later = run["orchestration"]["decisions"]
        measured[history] = (first["input_tokens"], [d["input_tokens"] for d in later])
    (first_short, later_short), (first_long, later_long) = measured[1], measured[12]
    assert first_long > first_short + 500  # the first decision sees the longer thread
    assert len(later_short) == len(later_long) == 2
    for short, long in zip(later_short, later_long, strict=True):
        assert abs(long - short) <= 0.05 * short, measured


@pytest.fixture(scope="module")
def tight_budget(tmp_path_factory):
    """An embedded Podium whose runs may spend only 100 tokens on decisions."""
    workdir = tmp_path_factory.mktemp("budget")
    port = free_port()
    env = base_env(
        PODIUM_DATABASE_URL=f"sqlite:///{workdir / 'podium.db'}",
        PODIUM_ADMIN_KEY="budget-admin-key-0123456789",
        PODIUM_HTTP_PORT=str(port),
        PODIUM_SIMULATED_LATENCY_MS="0",
        PODIUM_SIMULATED_SCRIPT=str(FIXTURES / "sim_script.yaml"),
        PODIUM_ORCHESTRATOR_TOKEN_BUDGET="100",
        PYTHONPATH=str(ROOT),
    )
    proc, url = start_embedded(env, workdir)
    with PodiumClient(url, env["PODIUM_ADMIN_KEY"]) as admin:
        tenant = admin.create_tenant("budget")
        key = admin.create_key(tenant["id"])["key"]
    with PodiumClient(url, key) as client:
        yield client
    stop_embedded(proc)


def test_exhausted_decision_budget_falls_back(tight_budget):
    client = tight_budget
    thread = client.create_thread()
    run = finished(client, thread["id"], "Ship it [t:decide-plan]")
    assert run["status"] == "completed"
    first, *later = run["orchestration"]["decisions"]
    assert first["source"] == "orchestrator agent"  # within budget when it was taken
    assert later
    assert all(d["source"] == "fallback" for d in later)
    assert all(d["fallback"].startswith("budget_exhausted") for d in later)
    assert all(d["dimensions"]["action"] == "continue" for d in later)


def _wait_status(client, run_id, statuses, timeout=30):
    statuses = (statuses,) if isinstance(statuses, str) else statuses
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get_run(run_id)
        if run["status"] in statuses:
            return run
        time.sleep(0.05)
    raise AssertionError(
        f"run {run_id} never reached {statuses}: {client.get_run(run_id)['status']}"
    )
