"""A `direct` run's call ends its run in the call's own commit (docs/architecture.md, "The run
lifecycle"), driven in-process through the real lifecycle, the real orchestrator step and
the real agent worker on SQLite, with the simulated model: nothing is faked but the model.

The run ends exactly as the orchestrator would have ended it (outcomes, usage, the thread
let go, the learner told), with one message fewer; and whenever the run is no longer simply
waiting for that answer (cancelled, past its deadline), the call is committed alone and the
orchestrator decides, as before."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from podium.lifecycle import calls as call_lifecycle
from podium.lifecycle import runs as run_lifecycle
from podium.lifecycle.calls import CallResult
from podium.lifecycle.snapshot import CallView
from podium.messages import AdvanceRun, ExecuteAgentCall
from podium.runtime import Runtime
from podium.store import (
    AgentCall,
    CallStatus,
    OrchestrationContext,
    OrchestrationDecision,
    OutboxMessage,
    Run,
    Thread,
    utcnow,
)
from podium.store.guards import owner_writes
from podium_agent_worker.execute import Executor
from podium_orchestrator.step import advance
from tests.support.inproc import direct_run


def _advances(runtime: Runtime, run_id: str) -> list[str]:
    """The reasons of the AdvanceRun messages staged for a run."""
    with runtime.db.read() as session:
        rows = session.scalars(
            select(OutboxMessage.payload).where(OutboxMessage.task == AdvanceRun.TASK.value)
        ).all()
    return [r["reason"] for r in rows if r.get("run_id") == run_id]


def _row(runtime: Runtime, model: Any, **where: Any) -> Any:
    """One row of ``model``'s table, as a plain row."""
    table = model.__table__
    with runtime.db.read() as session:
        return session.execute(
            select(table).where(*(table.c[k] == v for k, v in where.items()))
        ).one()


def test_the_call_of_a_direct_run_ends_it_as_the_orchestrator_would(runtime: Runtime) -> None:
    run_id, call_id = direct_run(runtime)
    assert _row(runtime, AgentCall, id=call_id).ends_run
    status = Executor(runtime).execute(ExecuteAgentCall(call_id=call_id, run_id=run_id))
    assert status == CallStatus.SUCCEEDED
    run = _row(runtime, Run, id=run_id)
    call = _row(runtime, AgentCall, id=call_id)
    assert run.status == "completed"
    assert run.output == call.output and run.finished_at is not None
    assert run.usage["output_tokens"] == call.output_tokens > 0
    assert run.cost_usd == pytest.approx(call.cost_usd)
    decision = _row(runtime, OrchestrationDecision, run_id=run_id)
    assert decision.actual_outcome == {"status": "completed", "agent_calls": 1}
    assert _row(runtime, OrchestrationContext, run_id=run_id).outcome == {
        "status": "completed",
        "error": None,
        "note": None,
        "guards": [],
    }
    assert _row(runtime, Thread, id=run.thread_id).active_run_id is None
    # The orchestrator was not woken: the run's only AdvanceRun is its start.
    assert _advances(runtime, run_id) == ["run.created"]
    # A later trigger finds nothing to do.
    step = advance(runtime, AdvanceRun(run_id=run_id, reason="call.finished", call_id=call_id))
    assert step.plan is not None and not step.plan.writes


def _claim(runtime: Runtime, call_id: str) -> CallView:
    claimed = call_lifecycle.claim(runtime, call_id, lambda session, c: None)
    assert claimed is not None
    return claimed[0].call


def _succeed(runtime: Runtime, call: CallView) -> call_lifecycle.Committed | None:
    result = CallResult(CallStatus.SUCCEEDED, output="four", output_tokens=1)
    return call_lifecycle.commit(runtime, call, result, "four")


def test_a_run_cancelled_meanwhile_is_left_to_the_orchestrator(runtime: Runtime) -> None:
    run_id, call_id = direct_run(runtime)
    call = _claim(runtime, call_id)
    tenant_id = _row(runtime, Run, id=run_id).tenant_id
    run_lifecycle.cancel(runtime, tenant_id, run_id)
    committed = _succeed(runtime, call)
    assert committed is not None and committed.ended is None
    assert _row(runtime, Run, id=run_id).status == "running"
    assert _advances(runtime, run_id) == ["run.created", "run.cancel", "call.finished"]
    advance(runtime, AdvanceRun(run_id=run_id, reason="call.finished", call_id=call_id))
    assert _row(runtime, Run, id=run_id).status == "cancelled"


def test_a_run_past_its_deadline_is_left_to_the_orchestrator(runtime: Runtime) -> None:
    run_id, call_id = direct_run(runtime)
    call = _claim(runtime, call_id)
    with owner_writes(), runtime.db.session() as session:
        session.execute(
            update(Run).where(Run.id == run_id).values(deadline_at=utcnow() - timedelta(seconds=1))
        )
    committed = _succeed(runtime, call)
    assert committed is not None and committed.ended is None
    advance(runtime, AdvanceRun(run_id=run_id, reason="call.finished", call_id=call_id))
    run = _row(runtime, Run, id=run_id)
    assert run.status == "failed" and run.error["code"] == "deadline_exceeded"


def test_a_failed_call_is_left_to_the_orchestrator(runtime: Runtime) -> None:
    run_id, call_id = direct_run(runtime)
    call = _claim(runtime, call_id)
    failed = CallResult(CallStatus.FAILED, error={"code": "provider_bad_request", "message": "x"})
    committed = call_lifecycle.commit(runtime, call, failed, None)
    assert committed is not None and committed.ended is None
    advance(runtime, AdvanceRun(run_id=run_id, reason="call.finished", call_id=call_id))
    run = _row(runtime, Run, id=run_id)
    assert run.status == "failed" and run.error["code"] == "provider_bad_request"


def test_a_second_commit_of_the_call_changes_nothing(runtime: Runtime) -> None:
    run_id, call_id = direct_run(runtime)
    call = _claim(runtime, call_id)
    assert _succeed(runtime, call) is not None
    assert _succeed(runtime, call) is None  # committed once, whatever the redeliveries
    assert _row(runtime, Run, id=run_id).status == "completed"
