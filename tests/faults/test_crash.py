"""(a) SIGKILL the agent-worker with >= 50 calls in flight; (b) SIGKILL the orchestrator
mid-run; and a graceful shutdown (SIGTERM) of the agent-worker. After the restart every run
completes, and no agent message is written twice."""

from __future__ import annotations

import signal
import time
import uuid

from podium.celery_app import make_celery
from podium.messages import ExecuteAgentCall
from podium.queues import Queue
from tests.faults.harness import (
    RECOVERY_WINDOW_S,
    Load,
    Tenant,
    dead_services,
    iter_prompts,
    kill_agent_worker_mid_flight,
    log_offset,
    queued_ids,
    reaper_actions,
    record,
    stack_settings,
    unacked_messages,
    verdict,
    wait_until,
)
from tests.support.stack import Stack


def test_a_sigkill_agent_worker_with_calls_in_flight(fault_stack: Stack, fault_tenant: Tenant):
    report = kill_agent_worker_mid_flight(fault_stack, fault_tenant, "a_sigkill_agent_worker")
    record(report)
    assert verdict(report) == [], report.line()


def test_b_sigkill_orchestrator_mid_run(fault_stack: Stack, fault_tenant: Tenant):
    """A burst of multi-step runs (plan_execute: planner, then one step at a time with a
    checkpoint decision after each; critic_loop: producer, critic, revision), the
    orchestrator SIGKILLed while they are half way, then restarted."""
    load = Load(fault_tenant, fault_stack.env["PODIUM_DATABASE_URL"])
    since = log_offset(fault_stack)
    try:
        prompts = [
            *iter_prompts(15, "[t:decide-plan] orchestrator crash {i}: plan a migration"),
            *iter_prompts(15, "[t:decide-critic] orchestrator crash {i}: write a parser"),
        ]
        subs = load.submit(prompts)
        ids = [s.run_id for s in subs if s.run_id]
        assert len(ids) == len(prompts)
        # Half way: some calls done, others not dispatched yet.
        load.wait_calls(ids, "succeeded", at_least=len(ids), timeout=60)
        fault_stack.stop("orchestrator", sig=signal.SIGKILL)
        mid = load.statuses(ids)
        running_at_kill = sum(1 for s in mid.values() if s in ("queued", "running"))
        time.sleep(1)
        fault_stack.start("orchestrator")
        restarted = time.monotonic()
        statuses, ended = load.wait_terminal(ids, timeout=RECOVERY_WINDOW_S)
        report = load.report(
            "b_sigkill_orchestrator",
            subs,
            statuses,
            runs_unfinished_at_kill=running_at_kill,
            reaper=reaper_actions(fault_stack, since),
        )
        report.recover_s = round(ended - restarted, 1)
        report.postmortems = load.postmortems(ids, expect=len(ids), timeout=30)
        report.notes["answers_lost"] = load.answered_calls_without_message(ids)
        report.notes["dead_services"] = dead_services(fault_stack)
        record(report)
        assert running_at_kill > 0, "the kill came too late to test anything"
        assert verdict(report) == [], report.line()
    finally:
        load.close()


def test_graceful_shutdown_of_agent_worker(fault_stack: Stack, fault_tenant: Tenant):
    """SIGTERM is Celery's warm shutdown: the worker stops taking messages, finishes the calls
    it runs, gives back what it had not started, and exits; the restarted worker does the
    rest. Nothing is re-executed, nothing is lost, nothing is left in the broker's unacked
    set (where it would wait for the visibility timeout)."""
    load = Load(fault_tenant, fault_stack.env["PODIUM_DATABASE_URL"])
    # What earlier tests left there (a SIGKILLed worker's messages, restored only after the
    # visibility timeout): this test must add nothing to it.
    unacked_before = unacked_messages(fault_stack)
    try:
        # Work the worker holds but has not started: a message due in two minutes (as a retry
        # with a countdown is). A warm shutdown must give it back to the queue at once.
        held = ExecuteAgentCall(call_id=f"held-{uuid.uuid4().hex[:8]}", run_id="held")
        app = make_celery(stack_settings(fault_stack), "fault-injector")
        app.send_task(
            held.TASK.value,
            args=[held.model_dump(mode="json")],
            queue=Queue.AGENTS_DEFAULT.value,
            task_id=held.id,
            countdown=120,
        )
        assert wait_until(lambda: not queued_ids(fault_stack, Queue.AGENTS_DEFAULT.value))
        # More runs than the pool's 64 slots: some calls are still queued at the SIGTERM.
        subs = load.submit(
            list(iter_prompts(80, "[sim latency_ms=8000] shutdown {i}", pattern="direct"))
        )
        ids = [s.run_id for s in subs if s.run_id]
        in_flight = load.wait_calls(ids, "running", at_least=50, timeout=30)
        assert in_flight >= 50, f"only {in_flight} calls in flight"
        proc = fault_stack.procs["agent-worker"]
        stopping = time.monotonic()
        fault_stack.stop("agent-worker", sig=signal.SIGTERM, timeout=60)
        drained_s = time.monotonic() - stopping
        exit_code = proc.returncode
        done_at_stop = load.count_calls(ids, "succeeded")
        unacked = unacked_messages(fault_stack) - unacked_before
        requeued = held.id in queued_ids(fault_stack, Queue.AGENTS_DEFAULT.value)
        fault_stack.start("agent-worker")
        restarted = time.monotonic()
        statuses, ended = load.wait_terminal(ids, timeout=RECOVERY_WINDOW_S)
        report = load.report(
            "graceful_shutdown_agent_worker",
            subs,
            statuses,
            calls_in_flight_at_sigterm=in_flight,
            calls_done_at_exit=done_at_stop,
            shutdown_s=round(drained_s, 1),
            exit_code=exit_code,
            unacked_added_by_shutdown=unacked,
            held_message_requeued=requeued,
        )
        report.recover_s = round(ended - restarted, 1)
        report.postmortems = load.postmortems(ids, expect=len(ids), timeout=30)
        report.notes["answers_lost"] = load.answered_calls_without_message(ids)
        report.notes["dead_services"] = dead_services(fault_stack)
        record(report)
        assert exit_code == 0, "a warm shutdown exits cleanly"
        assert done_at_stop >= in_flight, "the calls running at SIGTERM were finished"
        assert requeued, "the message held but not started went back to the queue"
        assert unacked <= 0, "nothing left waiting for the visibility timeout"
        assert verdict(report) == [], report.line()
        assert report.reexecuted_calls == 0, "a warm shutdown re-executes nothing"
    finally:
        load.close()
