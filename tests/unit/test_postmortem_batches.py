"""The learner's post-mortems in batches, in-process on SQLite with real runs (driven by the
real orchestrator step and agent worker, simulated model): one call writes the facts,
outcomes and statistics of several runs, marks their events processed, and says which
reviews are due; the same events again change nothing."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from podium.messages import AdvanceRun, ExecuteAgentCall, RunCompleted
from podium.runtime import Runtime
from podium.store import LearningStat, OutboxMessage, PostMortem, ProcessedEvent, Run, RunOutcome
from podium_agent_worker.execute import Executor
from podium_learner.postmortem import ReviewDue, record_postmortems, review_sampled
from podium_orchestrator.step import advance
from tests.support.inproc import direct_run, make_runtime, make_tenant


def _completed(runtime: Runtime, run_ids: list[str]) -> list[RunCompleted]:
    """The RunCompleted messages the runs' ends staged, as the learner receives them."""
    with runtime.db.read() as session:
        payloads = session.scalars(
            select(OutboxMessage.payload).where(OutboxMessage.task == RunCompleted.TASK.value)
        ).all()
    return [RunCompleted.model_validate(p) for p in payloads if p["run_id"] in run_ids]


def _count(runtime: Runtime, model: type, **where: str) -> int:
    with runtime.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(model).filter_by(**where)))


def _runs(runtime: Runtime, prompts: list[str]) -> list[str]:
    tenant_id = make_tenant(runtime)
    executor = Executor(runtime)
    run_ids = []
    for prompt in prompts:
        run_id, call_id = direct_run(runtime, prompt, tenant_id=tenant_id)
        executor.execute(ExecuteAgentCall(call_id=call_id, run_id=run_id))
        # A failed call wakes the orchestrator, which ends the run (a no-op for the others).
        advance(runtime, AdvanceRun(run_id=run_id, reason="call.finished", call_id=call_id))
        run_ids.append(run_id)
    return run_ids


def test_a_batch_writes_every_postmortem_once(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, review_sample_rate=0.0)
    try:
        run_ids = _runs(
            runtime,
            ["What is 2+2?", "What is a queue?", "boom [sim error=bad_request]"],
        )
        messages = _completed(runtime, run_ids)
        assert len(messages) == 3
        result = record_postmortems(runtime, messages)
        assert _count(runtime, PostMortem) == 3
        assert _count(runtime, RunOutcome) == 3
        assert _count(runtime, ProcessedEvent) == 3
        with runtime.db.read() as session:
            statuses = dict(session.execute(select(Run.id, Run.status)).all())
            facts = {pm.run_id: pm.facts for pm in session.scalars(select(PostMortem)).all()}
            samples = session.scalars(
                select(LearningStat.samples).where(
                    LearningStat.dimension == "pattern", LearningStat.value == "direct"
                )
            ).all()
        assert {f["status"] for f in facts.values()} == {"completed", "failed"}
        assert all(facts[r]["agent_calls"] == 1 for r in run_ids)
        assert sum(samples) == 3  # request classes may differ
        # Sampling at 0 %: only the failed run's review is due.
        due = {m.run_id: result[m.id] for m in messages}
        for run_id, entry in due.items():
            if statuses[run_id] == "failed":
                assert isinstance(entry, ReviewDue) and entry.facts["status"] == "failed"
            else:
                assert entry is False
        # Redelivered: nothing is written twice, nothing is due.
        again = record_postmortems(runtime, messages)
        assert all(v is None for v in again.values())
        assert _count(runtime, PostMortem) == 3 and _count(runtime, ProcessedEvent) == 3
    finally:
        runtime.close()


def test_the_sampled_share_of_completed_runs_gets_a_review(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, review_sample_rate=0.5)
    try:
        run_ids = _runs(runtime, [f"What is item {i}?" for i in range(6)])
        result = record_postmortems(runtime, _completed(runtime, run_ids))
        due = {
            m.run_id: isinstance(v, ReviewDue)
            for m in _completed(runtime, run_ids)
            for k, v in result.items()
            if k == m.id
        }
        assert due == {r: review_sampled(r, "completed", 0.5) for r in run_ids}
    finally:
        runtime.close()


def test_sampling_is_stable_and_near_its_rate() -> None:
    ids = [f"{i:032x}" for i in range(4000)]
    chosen = [i for i in ids if review_sampled(i, "completed", 0.1)]
    assert 300 < len(chosen) < 500
    assert chosen == [i for i in ids if review_sampled(i, "completed", 0.1)]
    assert all(review_sampled(i, "failed", 0.0) for i in ids[:10])
    assert not any(review_sampled(i, "completed", 0.0) for i in ids)
    assert all(review_sampled(i, "completed", 1.0) for i in ids)
