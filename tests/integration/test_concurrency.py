"""100 runs sent concurrently over HTTP all complete, each with one answer, one decision and
one post-mortem."""

from __future__ import annotations

import concurrent.futures
import time

from sqlalchemy import text

from tests.support.stack import wait_for_run

RUNS = 100


def test_hundred_concurrent_runs(make_tenant, store):
    t = make_tenant("load")
    threads = [t.client.create_thread()["id"] for _ in range(RUNS)]

    def submit(thread_id: str) -> str:
        return str(t.client.create_run(thread_id, f"concurrent prompt for {thread_id}")["id"])

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        run_ids = list(pool.map(submit, threads))
    assert len(set(run_ids)) == RUNS
    statuses = [wait_for_run(t.client, run_id, timeout=120)["status"] for run_id in run_ids]
    assert statuses == ["completed"] * RUNS
    deadline = time.monotonic() + 30
    with store.connect() as conn:
        while True:
            postmortems = conn.execute(
                text("SELECT count(*) FROM postmortems WHERE tenant_id = :t"), {"t": t.id}
            ).scalar_one()
            if postmortems == RUNS or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert postmortems == RUNS
        per_run = conn.execute(
            text(
                """
                SELECT r.id,
                  (SELECT count(*) FROM thread_events e
                    WHERE e.run_id = r.id AND e.kind = 'agent_message') AS answers,
                  (SELECT count(*) FROM orchestration_decisions d
                    WHERE d.run_id = r.id AND length(d.rationale) > 0) AS decisions
                FROM runs r WHERE r.tenant_id = :t
                """
            ),
            {"t": t.id},
        ).all()
    assert len(per_run) == RUNS
    assert all(row.answers == 1 and row.decisions == 1 for row in per_run), per_run
