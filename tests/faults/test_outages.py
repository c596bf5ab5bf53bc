"""(c) Redis (broker, event streams, leases) and (d) PostgreSQL (the store) are killed and
restarted under load. Both are private servers on free ports: the machine's shared ones are
never touched. While a dependency is down the gateway answers 503 with Retry-After at once
and /readyz is red; a POST answered 503 was not accepted, and the test client retries it
(the contract). After recovery every accepted run completes, none twice."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from podium.store.provision import drop_database, ensure_database
from tests.faults.harness import (
    PG_SERVER,
    RECOVERY_WINDOW_S,
    REDIS_URL,
    FaultReport,
    Load,
    PrivatePostgres,
    PrivateRedis,
    Submission,
    Tenant,
    clean_redis_prefix,
    dead_services,
    fault_env,
    iter_prompts,
    log_offset,
    reaper_actions,
    record,
    start_stack,
    timed_get,
    timed_post,
    verdict,
)
from tests.support.services import ensure_postgres, ensure_redis
from tests.support.stack import Stack

OUTAGE_S = 3.0
# A client that waits longer than this for an answer calls it a hang.
HANG_S = 5.0


def _burst() -> list[tuple[str, dict[str, Any]]]:
    return [
        *iter_prompts(30, "[sim latency_ms=4000] outage test {i}: draft a reply", pattern="direct"),
        *iter_prompts(10, "[t:decide-plan] outage test {i}: plan a rollout"),
    ]


def run_outage(
    stack: Stack,
    test: str,
    kill: Callable[[], None],
    restore: Callable[[], None],
    expected_code: str,
    store_down: bool,
) -> FaultReport:
    component = "store" if store_down else "broker"
    tenant = Tenant(stack)
    load = Load(tenant, stack.env["PODIUM_DATABASE_URL"])
    since = log_offset(stack)
    try:
        first = load.submit(_burst())
        ids = [s.run_id for s in first if s.run_id]
        assert len(ids) == len(first)
        a_run = ids[0]
        in_flight = load.wait_calls(ids, "running", at_least=20, timeout=30)
        thread_id = load.thread_of(a_run)

        kill()
        down_at = time.monotonic()
        # /readyz turns red once the probe (every 0.5 s here) saw the dependency down ...
        while True:
            ready, ready_s, ready_headers, ready_body = timed_get(
                f"{stack.url}/readyz", timeout=HANG_S
            )
            seen_down = ready == 503 and ready_body["checks"][component] != "ok"
            if seen_down or time.monotonic() - down_at > 10:
                break
            time.sleep(0.1)
        # ... and admission answers 503 with Retry-After, at once.
        status, post_s, headers, body = timed_post(
            stack.url,
            tenant.key,
            f"/v1/threads/{thread_id}/runs",
            {"input": "during the outage"},
            timeout=HANG_S,
        )
        read_status, read_s, _h, _b = _read_during_outage(stack, tenant, a_run)

        # Clients keep submitting during the outage; they retry their 503s until recovery.
        during: list[Submission] = []
        submitter = threading.Thread(
            target=lambda: during.extend(
                load.submit(list(iter_prompts(10, "submitted during the outage {i}")))
            )
        )
        submitter.start()
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        restore()
        restored = time.monotonic()
        submitter.join(timeout=RECOVERY_WINDOW_S)
        subs = first + during
        all_ids = [s.run_id for s in subs if s.run_id]
        statuses, ended = load.wait_terminal(all_ids, timeout=RECOVERY_WINDOW_S)
        report = load.report(
            test,
            subs,
            statuses,
            calls_in_flight_at_outage=in_flight,
            outage_s=round(restored - down_at, 1),
            readyz_during_outage=ready,
            readyz_answer_s=round(ready_s, 3),
            post_during_outage=status,
            post_answer_s=round(post_s, 3),
            post_code=body.get("error", {}).get("code") if isinstance(body, dict) else None,
            read_during_outage=read_status,
            read_answer_s=round(read_s, 3),
            reaper=reaper_actions(stack, since),
        )
        report.recover_s = round(ended - restored, 1)
        report.postmortems = load.postmortems(all_ids, expect=len(all_ids), timeout=40)
        report.notes["answers_lost"] = load.answered_calls_without_message(all_ids)
        report.notes["dead_services"] = dead_services(stack)
        record(report)

        assert verdict(report) == [], report.line()
        assert seen_down and ready_headers.get("retry-after"), ready_body
        assert status == 503, (status, body)
        assert headers.get("retry-after"), "a 503 says when to retry"
        assert body["error"]["code"] == expected_code
        assert read_status == (503 if store_down else 200)
        assert report.rejected_503 > 0, "the clients of the outage were refused, not hung"
        return report
    finally:
        load.close()
        tenant.close()


def _read_during_outage(
    stack: Stack, tenant: Tenant, run_id: str
) -> tuple[int, float, dict[str, str], Any]:
    started = time.monotonic()
    r = httpx.get(
        f"{stack.url}/v1/runs/{run_id}",
        headers={"Authorization": f"Bearer {tenant.key}"},
        timeout=HANG_S,
    )
    return r.status_code, time.monotonic() - started, dict(r.headers), r.text


@pytest.fixture
def redis_stack(tmp_path: Path) -> Iterator[tuple[Stack, PrivateRedis]]:
    ensure_postgres()
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    db = f"{PG_SERVER}/podium_fault_{uuid.uuid4().hex[:12]}"
    ensure_database(db)
    stack: Stack | None = None
    try:
        stack = start_stack(tmp_path / "stack", fault_env(db, server.url, "podium-c:"))
        yield stack, server
    finally:
        if stack is not None:
            stack.stop()
        server.stop()
        drop_database(db)


@pytest.fixture
def postgres_stack(tmp_path: Path) -> Iterator[tuple[Stack, PrivatePostgres]]:
    ensure_redis()
    server = PrivatePostgres()
    prefix = f"podium-fault-d-{uuid.uuid4().hex[:8]}:"
    stack: Stack | None = None
    try:
        server.init()
        server.start()
        db = f"{server.server_url}/podium_fault"
        ensure_database(db)
        stack = start_stack(tmp_path / "stack", fault_env(db, REDIS_URL, prefix))
        yield stack, server
    finally:
        if stack is not None:
            stack.stop()
        server.destroy()
        clean_redis_prefix(REDIS_URL, prefix)


def test_c_restart_redis_under_load(redis_stack: tuple[Stack, PrivateRedis]):
    stack, server = redis_stack
    run_outage(
        stack,
        "c_restart_redis",
        kill=server.kill,
        restore=server.start,
        expected_code="broker_unavailable",
        store_down=False,
    )


def test_d_restart_postgres_under_load(postgres_stack: tuple[Stack, PrivatePostgres]):
    stack, server = postgres_stack
    run_outage(
        stack,
        "d_restart_postgres",
        kill=lambda: server.stop("fast"),
        restore=server.start,
        expected_code="store_unavailable",
        store_down=True,
    )
