"""Post-mortems of measured facts for each finished run (DESIGN §4, immediate learning)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from podium.messages import RunCompleted
from podium.metrics import POSTMORTEMS
from podium.runtime import Runtime
from podium.store import (
    AgentCall,
    OrchestrationDecision,
    PostMortem,
    ProcessedEvent,
    Run,
)

log = logging.getLogger(__name__)

CONSUMER = "learner.run_completed"


def measured_facts(
    run: Run, calls: list[AgentCall], decisions: list[OrchestrationDecision]
) -> dict[str, Any]:
    def ms(delta: Any) -> float | None:
        return round(delta.total_seconds() * 1000, 1) if delta is not None else None

    return {
        "status": run.status,
        "pattern": run.pattern,
        "agents": sorted({c.agent for c in calls}),
        "agent_calls": len(calls),
        "failed_calls": sum(1 for c in calls if c.status == "failed"),
        "providers": sorted({c.provider for c in calls if c.provider}),
        "decisions": len(decisions),
        "decision_sources": [d.source for d in decisions],
        "fallbacks": [d.fallback_reason for d in decisions if d.fallback_reason],
        "latency_ms": ms(run.finished_at - run.created_at if run.finished_at else None),
        "queue_wait_ms": ms(run.started_at - run.created_at if run.started_at else None),
        "call_latency_ms": [round(c.latency_ms, 1) for c in calls if c.latency_ms is not None],
        "input_tokens": sum(c.input_tokens for c in calls),
        "output_tokens": sum(c.output_tokens for c in calls),
        "error": run.error,
    }


def record_postmortem(runtime: Runtime, message: RunCompleted) -> bool:
    """Write the run's post-mortem once. Returns False for a duplicate event."""
    try:
        with runtime.transaction() as tx:
            session = tx.session
            if session.get(ProcessedEvent, (CONSUMER, message.id)) is not None:
                return False
            session.add(ProcessedEvent(consumer=CONSUMER, event_id=message.id))
            run = session.get(Run, message.run_id)
            if run is None:
                log.warning("run.completed for unknown run %s", message.run_id)
                return False
            if session.scalars(select(PostMortem.id).where(PostMortem.run_id == run.id)).first():
                return False  # a different event id for a run already reviewed
            calls = list(
                session.scalars(
                    select(AgentCall)
                    .where(AgentCall.run_id == run.id)
                    .order_by(AgentCall.created_at)
                )
            )
            decisions = list(
                session.scalars(
                    select(OrchestrationDecision)
                    .where(OrchestrationDecision.run_id == run.id)
                    .order_by(OrchestrationDecision.seq)
                )
            )
            session.add(
                PostMortem(
                    tenant_id=run.tenant_id,
                    run_id=run.id,
                    event_id=message.id,
                    facts=measured_facts(run, calls, decisions),
                )
            )
    except IntegrityError:
        # A concurrent delivery of the same event (or run) committed first.
        return False
    POSTMORTEMS.labels(message.status).inc()
    return True
