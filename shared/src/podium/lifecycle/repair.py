"""Writes that repair or complete the record: decisions made but never applied (superseded),
and the reaper's nudges of stalled runs and lost learner notifications."""

from __future__ import annotations

from sqlalchemy import func, select, update

from podium.decisions import Decision, DecisionOutcome
from podium.lifecycle.plan import StepPlan
from podium.lifecycle.step import record_decisions
from podium.lifecycle.tx import owned_transaction
from podium.messages import AdvanceRun, RunCompleted
from podium.runtime import Runtime
from podium.store import (
    OrchestrationContext,
    OrchestrationDecision,
    Run,
)

# --- decisions that were not applied -----------------------------------------------------------


def record_superseded(
    runtime: Runtime, run_id: str, tenant_id: str, decisions: list[Decision], reason: str
) -> list[Decision]:
    """Record decisions that were made but will not be executed (the run was cancelled,
    answered or interrupted meanwhile, or another step applied first): their cost was spent
    and counts against the context's budget. Returns them numbered."""
    if not decisions:
        return []
    with owned_transaction(runtime) as tx:
        session = tx.session
        context_id = session.scalars(
            select(OrchestrationContext.id).where(OrchestrationContext.run_id == run_id)
        ).one_or_none()
        if context_id is None:
            return []
        session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(version=Run.version + 1)
            .execution_options(synchronize_session=False)
        )
        last = session.scalar(
            select(func.max(OrchestrationDecision.seq)).where(
                OrchestrationDecision.context_id == context_id
            )
        )
        numbered = [
            d.numbered((last or 0) + i).with_outcome(
                DecisionOutcome(status="superseded", reason=reason)
            )
            for i, d in enumerate(decisions, start=1)
        ]
        plan = StepPlan(
            run_id=run_id, tenant_id=tenant_id, thread_id="", version=0, context_id=context_id
        )
        record_decisions(session.connection(), plan, context_id, numbered)
        spent = sum(d.usage.tokens for d in decisions)
        if spent:
            session.execute(
                update(OrchestrationContext)
                .where(OrchestrationContext.id == context_id)
                .values(tokens_used=OrchestrationContext.tokens_used + spent)
                .execution_options(synchronize_session=False)
            )
        return numbered


# --- repair -----------------------------------------------------------------------------------


def nudge(runtime: Runtime, run_ids: list[str], reason: str) -> None:
    """Trigger a step of each run (the reaper and the deadline sweep; a step that has nothing
    to do returns at once)."""
    if not run_ids:
        return
    with owned_transaction(runtime) as tx:
        for run_id in run_ids:
            tx.send(AdvanceRun.model_validate({"run_id": run_id, "reason": reason}))


def notify_learner(runtime: Runtime, messages: list[RunCompleted]) -> None:
    """Send the learner the end of runs it has no post-mortem for (it deduplicates)."""
    if not messages:
        return
    with owned_transaction(runtime) as tx:
        for message in messages:
            tx.send(message)
