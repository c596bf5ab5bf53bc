"""(e) Malformed messages injected into every queue are dead-lettered with their reason; the
workers stay alive and keep working; ``podium dlq list`` shows them and ``podium dlq
replay ID`` sends one again."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from sqlalchemy import create_engine, text

from podium.celery_app import make_celery
from podium.queues import Queue, TaskName
from tests.faults.harness import FaultReport, Load, Tenant, record, stack_settings
from tests.support.stack import Stack

QUEUES = {
    Queue.ORCHESTRATOR.value: TaskName.ADVANCE_RUN.value,
    Queue.AGENTS_DEFAULT.value: TaskName.EXECUTE_AGENT_CALL.value,
    Queue.LEARNER.value: TaskName.RUN_COMPLETED.value,
}
# What each kind of malformed message must be recorded as.
EXPECTED_REASONS = {
    "invalid_payload": "invalid",
    "unknown_task": "unknown_task",
    "wrong_content_type": "rejected",
    "undecodable_body": "undecodable",
}


def _headers(task: str, marker: str) -> dict[str, Any]:
    """Celery's task protocol 2 headers, as a foreign producer would write them."""
    task_id = uuid.uuid4().hex
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "shadow": None,
        "eta": None,
        "expires": None,
        "retries": 0,
        "timelimit": [None, None],
        "argsrepr": marker,
        "kwargsrepr": "{}",
        "origin": "fault-injector",
        "ignore_result": True,
    }


def inject(stack: Stack, marker: str) -> int:
    """Send the four kinds of malformed message to each queue. Returns how many were sent."""
    app = make_celery(stack_settings(stack), "fault-injector")
    sent = 0
    with app.producer_or_acquire() as producer:
        for queue, task in QUEUES.items():
            # A payload that is not a valid message of the task's schema.
            app.send_task(task, args=[{"garbage": marker}], queue=queue)
            # A task name no consumer knows.
            app.send_task("podium.nope.no_such_task", args=[{"marker": marker}], queue=queue)
            # A content type the workers refuse (they accept JSON only).
            producer.publish(
                f"- [{marker}]\n- {{}}\n".encode(),
                exchange="",
                routing_key=queue,
                content_type="application/x-yaml",
                content_encoding="utf-8",
                headers=_headers(task, marker),
            )
            # A JSON content type whose body is not JSON.
            producer.publish(
                f"{{not json {marker}".encode(),
                exchange="",
                routing_key=queue,
                content_type="application/json",
                content_encoding="utf-8",
                headers=_headers(task, marker),
            )
            sent += 4
    return sent


def test_e_malformed_messages_are_dead_lettered(fault_stack: Stack, fault_tenant: Tenant):
    store = create_engine(fault_stack.env["PODIUM_DATABASE_URL"])
    marker = f"malformed-{uuid.uuid4().hex[:8]}"
    try:
        with store.connect() as conn:
            before = conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()
        sent = inject(fault_stack, marker)
        # Every queue's worker records its share; wait for all of them.
        deadline = time.monotonic() + 30
        while True:
            with store.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT id, task, queue, reason, error, payload FROM dead_letters "
                        "WHERE created_at > now() - interval '10 minutes'"
                    )
                ).all()
            ours = [r for r in rows if marker in json.dumps(r.payload) + r.error]
            if len(ours) >= sent or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        by_queue: dict[str, set[str]] = {}
        for r in ours:
            by_queue.setdefault(r.queue or "?", set()).add(r.reason)
        for queue in QUEUES:
            assert by_queue.get(queue) == set(EXPECTED_REASONS.values()), (queue, by_queue)
        for name in ("orchestrator", "agent-worker", "learner"):
            assert fault_stack.procs[name].poll() is None, f"{name} died"

        # The workers still work: a normal run goes through every service.
        load = Load(fault_tenant, fault_stack.env["PODIUM_DATABASE_URL"])
        try:
            subs = load.submit([("after the garbage: a normal request", {"pattern": "direct"})])
            ids = [s.run_id for s in subs if s.run_id]
            statuses, _ = load.wait_terminal(ids, timeout=60)
            assert statuses[ids[0]] == "completed"
            assert load.postmortems(ids, expect=1, timeout=30) == 1
        finally:
            load.close()

        # The operator's view, then a replay of one of them.
        listed = json.loads(fault_stack.podium("dlq", "list", "--json", "--limit", "500").stdout)
        listed_ids = {d["id"] for d in listed}
        assert {r.id for r in ours} <= listed_ids
        invalid = next(
            r for r in ours if r.reason == "invalid" and r.queue == Queue.ORCHESTRATOR.value
        )
        out = fault_stack.podium("dlq", "replay", invalid.id).stdout
        assert f"replayed {invalid.id}" in out
        # Sent again, consumed again, and (still invalid) recorded again as a new dead letter.
        deadline = time.monotonic() + 30
        while True:
            with store.connect() as conn:
                again = conn.execute(
                    text(
                        "SELECT count(*) FROM dead_letters WHERE reason = 'invalid' "
                        "AND queue = :q AND CAST(payload AS TEXT) LIKE :m"
                    ),
                    {"q": Queue.ORCHESTRATOR.value, "m": f"%{marker}%"},
                ).scalar_one()
                replayed = conn.execute(
                    text("SELECT replayed_at FROM dead_letters WHERE id = :i"), {"i": invalid.id}
                ).scalar_one()
            if again >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert replayed is not None
        assert again == 2, "the replayed message was not consumed"
        listed_after = json.loads(fault_stack.podium("dlq", "list", "--json").stdout)
        assert invalid.id not in {d["id"] for d in listed_after}, "a replayed letter is listed"

        report = FaultReport(
            test="e_malformed_messages",
            submitted=sent,
            dead_letters=len(ours),
            completed=1,
            notes={
                "by_queue": {q: sorted(r) for q, r in sorted(by_queue.items())},
                "dead_letters_before": before,
                "replayed": 1,
            },
        )
        record(report)
    finally:
        store.dispose()
