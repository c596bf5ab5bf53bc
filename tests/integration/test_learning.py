"""The learner: post-mortems, delayed feedback, statistics, and a closed loop in which a
tenant's poor ratings of a pattern make its later requests of that class avoid it."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from podium.client import PodiumAPIError
from podium.messages import RunCompleted
from podium_learner.postmortem import review_sampled
from tests.support.inspect import finished

REVIEW_PROMPT = "Please review our retry policy: 3 attempts, no jitter."


def _wait(predicate, timeout=30, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message}")


def _pattern_stat(client, request_class, pattern):
    for entry in client.request("GET", "/v1/insights", params={"request_class": request_class})[
        "classes"
    ]:
        for stat in entry["patterns"]:
            if stat["value"] == pattern:
                return stat
    return None


def test_postmortem_has_facts_and_a_structured_review(make_tenant):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], REVIEW_PROMPT)
    # Whether or not the run was sampled for a review, a poor rating asks for one.
    rated = t.client.http.post(f"/v1/runs/{run['id']}/feedback", json={"rating": 1})
    assert rated.status_code == 201, rated.text
    pm = _wait(
        lambda: (t.client.orchestration(run["id"])["postmortem"] or {}).get("review"),
        message="review",
    )
    facts = t.client.orchestration(run["id"])["postmortem"]["facts"]
    assert facts["pattern"] == "critic_loop" and facts["request_class"] == "review"
    assert facts["agent_calls"] == 4 and facts["cost_usd"] > 0
    assert set(pm) >= {"what_worked", "what_did_not", "lessons"}
    assert all(isinstance(x, str) for x in pm["lessons"]) and pm["lessons"]
    decision = run["orchestration"]["decisions"][0]
    assert decision["dimensions"]["request_class"] == "review"
    assert decision["dimensions"]["class_source"] == "rules"


def test_reviews_are_sampled_and_failed_runs_always_reviewed(make_tenant):
    """Every run gets its factual post-mortem; the LLM review goes to the sampled share of
    completed runs (10 % by default, chosen by run id) and to every failed run."""
    t = make_tenant()
    thread = t.client.create_thread()
    completed = [finished(t.client, thread["id"], f"What is item {i}?") for i in range(4)]
    failed = finished(t.client, thread["id"], "boom [sim error=bad_request]")
    assert failed["status"] == "failed"
    assert all(r["status"] == "completed" for r in completed)
    sampled = {r["id"]: review_sampled(r["id"], "completed", 0.1) for r in completed}
    assert not all(sampled.values())  # 1 in 10,000 run ids would make this test pointless

    def postmortem(run_id):
        return t.client.orchestration(run_id)["postmortem"]

    review = _wait(lambda: (postmortem(failed["id"]) or {}).get("review"), message="review")
    assert review.get("lessons") is not None, review
    assert postmortem(failed["id"])["facts"]["status"] == "failed"
    for run_id, chosen in sampled.items():
        pm = _wait(lambda run_id=run_id: postmortem(run_id), message="post-mortem")
        assert pm["facts"]["status"] == "completed" and pm["facts"]["agent_calls"] == 1
        if chosen:
            _wait(lambda run_id=run_id: postmortem(run_id)["review"], message="sampled review")
    # The failed run's review came after the others' facts: no review is on its way.
    time.sleep(0.5)
    for run_id, chosen in sampled.items():
        assert (postmortem(run_id)["review"] is not None) == chosen, run_id


def test_feedback_is_idempotent_per_run_key_and_message(make_tenant, store):
    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "What is a dead letter queue?")
    first = t.client.http.post(
        f"/v1/runs/{run['id']}/feedback", json={"rating": 4, "comment": "ok"}
    )
    assert first.status_code == 201
    again = t.client.http.post(
        f"/v1/runs/{run['id']}/feedback", json={"rating": 4, "comment": "ok"}
    )
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    changed = t.client.http.post(f"/v1/runs/{run['id']}/feedback", json={"rating": 1})
    assert changed.status_code == 409 and changed.json()["error"]["code"] == "feedback_exists"
    answer = next(
        m for m in t.client.messages(thread["id"])["data"] if m["kind"] == "agent_message"
    )
    on_message = t.client.http.post(
        f"/v1/runs/{run['id']}/feedback", json={"rating": 5, "message_id": answer["id"]}
    )
    assert on_message.status_code == 201
    bad = t.client.http.post(
        f"/v1/runs/{run['id']}/feedback", json={"rating": 5, "message_id": "nope"}
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_message"
    assert (
        t.client.http.post(f"/v1/runs/{run['id']}/feedback", json={"rating": 9}).status_code == 422
    )
    with store.connect() as conn:
        rows = conn.execute(
            text("SELECT rating FROM feedback WHERE run_id = :r ORDER BY rating"), {"r": run["id"]}
        ).all()
    assert [r.rating for r in rows] == [4, 5]
    # It reached the learner through the outbox: the outcome carries the mean rating.
    _wait(lambda: _outcome(store, run["id"], "feedback_count") == 2, message="feedback applied")
    assert _outcome(store, run["id"], "mean_rating") == pytest.approx(4.5)
    with store.connect() as conn:
        assert conn.execute(
            text("SELECT has_feedback FROM orchestration_contexts WHERE run_id = :r"),
            {"r": run["id"]},
        ).scalar_one()


def _outcome(store, run_id, column):
    with store.connect() as conn:
        return conn.execute(
            text(f"SELECT {column} FROM run_outcomes WHERE run_id = :r"), {"r": run_id}
        ).scalar()


def test_feedback_on_another_tenants_run_is_404_and_insights_stay_within_tenant(make_tenant):
    owner, other = make_tenant("owner"), make_tenant("other")
    thread = owner.client.create_thread()
    run = finished(owner.client, thread["id"], REVIEW_PROMPT)
    owner.client.request("POST", f"/v1/runs/{run['id']}/feedback", json={"rating": 5})
    with pytest.raises(PodiumAPIError) as err:
        other.client.request("POST", f"/v1/runs/{run['id']}/feedback", json={"rating": 1})
    assert err.value.status == 404
    _wait(lambda: _pattern_stat(owner.client, "review", "critic_loop"), message="owner stats")
    assert other.client.request("GET", "/v1/insights")["classes"] == []
    assert other.client.request("GET", "/v1/insights")["feedback"]["count"] == 0
    assert owner.client.request("GET", "/v1/insights")["feedback"]["count"] == 1


def test_duplicate_run_completed_gives_one_postmortem(make_tenant, store, stack):
    from celery import Celery

    t = make_tenant()
    thread = t.client.create_thread()
    run = finished(t.client, thread["id"], "hello")
    _wait(lambda: t.client.orchestration(run["id"])["postmortem"], message="post-mortem")
    app = Celery(broker=stack.env["PODIUM_BROKER_URL"])
    app.conf.broker_transport_options = {"global_keyprefix": stack.env["PODIUM_REDIS_KEY_PREFIX"]}
    # The same event twice, and a different event id for the same run.
    dup = RunCompleted(run_id=run["id"], tenant_id=t.id, status="completed").model_dump(mode="json")
    other = RunCompleted(run_id=run["id"], tenant_id=t.id, status="completed").model_dump(
        mode="json"
    )
    for payload in (dup, dup, other):
        app.send_task(RunCompleted.TASK.value, args=[payload], queue="learner")
    _wait(
        lambda: _processed(store, dup["id"]) and _processed(store, other["id"]),
        message="deliveries",
    )
    with store.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM postmortems WHERE run_id = :r"), {"r": run["id"]}
        ).scalar()
    assert count == 1


def _processed(store, event_id):
    with store.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM processed_events WHERE event_id = :e"), {"e": event_id}
        ).scalar()


def test_closed_loop_poor_feedback_makes_later_runs_avoid_the_pattern(make_tenant):
    tenant_t, tenant_u = make_tenant("T"), make_tenant("U")
    # 1. T sends class-C ("review") runs; the Orchestrator agent picks critic_loop for them.
    runs = []
    for _ in range(5):
        run = finished(tenant_t.client, tenant_t.client.create_thread()["id"], REVIEW_PROMPT)
        assert run["orchestration"]["decisions"][0]["dimensions"]["pattern"] == "critic_loop"
        runs.append(run)
    # 2. T's users rate those runs poorly.
    for run in runs:
        tenant_t.client.request(
            "POST", f"/v1/runs/{run['id']}/feedback", json={"rating": 1, "comment": "too slow"}
        )
    stat = _wait(
        lambda: (
            (s := _pattern_stat(tenant_t.client, "review", "critic_loop"))
            and s["feedback_count"] == 5
            and s
        ),
        message="statistics with the feedback",
    )
    assert stat["samples"] == 5 and stat["good"] == 0 and stat["lower_bound"] < 0.35
    # 3. T's later class-C runs avoid critic_loop, by a "learned policy" decision.
    later = finished(tenant_t.client, tenant_t.client.create_thread()["id"], REVIEW_PROMPT)
    assert later["status"] == "completed"
    first, policy = later["orchestration"]["decisions"]
    assert (
        first["source"] == "orchestrator agent" and first["dimensions"]["pattern"] == "critic_loop"
    )
    assert "critic_loop" in first["dimensions"]["guidance"]  # the record was in its prompt
    assert policy["source"] == "learned policy"
    assert (
        policy["dimensions"]["pattern"] == "direct"
        and policy["dimensions"]["overruled"] == "critic_loop"
    )
    assert "lower credible bound" in policy["rationale"]
    assert later["usage"]["agent_calls"] == 1
    assert tenant_t.client.request("GET", "/v1/insights")["policy"]["overrules"] == 1
    # 4. U, with no feedback, is unaffected.
    control = finished(tenant_u.client, tenant_u.client.create_thread()["id"], REVIEW_PROMPT)
    [decision] = control["orchestration"]["decisions"]
    assert (
        decision["dimensions"]["pattern"] == "critic_loop"
        and "guidance" not in decision["dimensions"]
    )


def test_retention_archives_contexts_with_feedback_or_failures(make_tenant, store, stack, tmp_path):
    """Drives the retention job the learner's beat runs, against the test database."""
    import subprocess
    import sys

    t = make_tenant()
    plain = finished(t.client, t.client.create_thread()["id"], "plain")
    rated = finished(t.client, t.client.create_thread()["id"], "rated")
    failed = finished(t.client, t.client.create_thread()["id"], "broken [sim error=bad_request]")
    t.client.request("POST", f"/v1/runs/{rated['id']}/feedback", json={"rating": 5})
    _wait(lambda: _has_feedback(store, rated["id"]), message="feedback flag")
    ids = [plain["id"], rated["id"], failed["id"]]
    with store.begin() as conn:
        conn.execute(
            text(
                "UPDATE orchestration_contexts SET created_at = created_at - :age"
                " WHERE run_id = ANY(:ids)"
            ),
            {"age": timedelta(days=40), "ids": ids},
        )
    script = (
        "from podium.runtime import Runtime; from podium.settings import Settings; "
        "from podium_learner.retention import apply_retention; "
        "print(apply_retention(Runtime(Settings(), name='t')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=stack.env, capture_output=True, text=True, check=True
    )
    assert "archived=2" in out.stdout and "deleted=1" in out.stdout, out.stdout
    with store.connect() as conn:
        rows = dict(
            conn.execute(
                text(
                    "SELECT run_id, archived FROM orchestration_contexts WHERE run_id = ANY(:ids)"
                ),
                {"ids": ids},
            ).all()
        )
    assert rows == {rated["id"]: True, failed["id"]: True}
    # The post-mortem and the statistics outlive the context.
    assert t.client.get_run(plain["id"])["status"] == "completed"
    with pytest.raises(PodiumAPIError):
        t.client.orchestration(plain["id"])


def _has_feedback(store, run_id):
    with store.connect() as conn:
        return conn.execute(
            text("SELECT has_feedback FROM orchestration_contexts WHERE run_id = :r"), {"r": run_id}
        ).scalar()
