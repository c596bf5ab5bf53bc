"""Post-mortems for finished runs and the effect of user feedback (docs/architecture.md,
"Learning").

Both consumers deduplicate by event id (processed_events), then recompute what they touch,
so at-least-once delivery is harmless."""

from __future__ import annotations

import logging
import zlib
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from podium.learning import classify
from podium.llm.resilience import shared_provider
from podium.messages import FeedbackReceived, RunCompleted
from podium.metrics import POSTMORTEMS
from podium.runtime import Runtime
from podium.store import (
    AgentCall,
    OrchestrationContext,
    OrchestrationDecision,
    PostMortem,
    ProcessedEvent,
    Run,
)
from podium_learner.outcomes import recompute_stats, upsert_outcome
from podium_learner.review import review

log = logging.getLogger(__name__)

CONSUMER = "learner.run_completed"
FEEDBACK_CONSUMER = "learner.feedback_received"


def measured_facts(
    run: Run, calls: list[AgentCall], decisions: list[OrchestrationDecision]
) -> dict[str, Any]:
    def ms(delta: Any) -> float | None:
        return round(delta.total_seconds() * 1000, 1) if delta is not None else None

    return {
        "status": run.status,
        "pattern": run.pattern,
        "request_class": run.request_class,
        "agents": sorted({c.agent for c in calls}),
        "agent_calls": len(calls),
        "failed_calls": sum(1 for c in calls if c.status == "failed"),
        "providers": sorted({c.provider for c in calls if c.provider}),
        "decisions": len(decisions),
        "decision_sources": [d.source for d in decisions],
        "fallbacks": [d.fallback_reason for d in decisions if d.fallback_reason],
        "guards": [g.get("guard") for g in run.guards or []],
        "latency_ms": ms(run.finished_at - run.created_at if run.finished_at else None),
        "queue_wait_ms": ms(run.started_at - run.created_at if run.started_at else None),
        "call_latency_ms": [round(c.latency_ms, 1) for c in calls if c.latency_ms is not None],
        "input_tokens": sum(c.input_tokens for c in calls),
        "output_tokens": sum(c.output_tokens for c in calls),
        "orchestrator_tokens": sum(d.input_tokens + d.output_tokens for d in decisions),
        "cost_usd": round(sum(c.cost_usd for c in calls), 6),
        "error": run.error,
    }


def record_postmortem(runtime: Runtime, message: RunCompleted) -> bool:
    """Write the run's post-mortem, refresh what the learner knows, then review it.

    Each part is idempotent and the event is marked processed only once all of them
    committed, so a retry after any failure redoes what is missing and nothing twice.
    False for an event already processed."""
    # Read first, write after: on SQLite a nested write transaction would wait for this one.
    with runtime.db.session() as session:
        if session.get(ProcessedEvent, (CONSUMER, message.id)) is not None:
            return False
        run = session.get(Run, message.run_id)
        if run is None:
            log.warning("run.completed for unknown run %s", message.run_id)
            return False
        postmortem: PostMortem | None = None
        if (
            session.scalars(select(PostMortem.id).where(PostMortem.run_id == run.id)).first()
            is None
        ):
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
            facts = measured_facts(run, calls, decisions)
            postmortem = PostMortem(
                tenant_id=run.tenant_id, run_id=run.id, event_id=message.id, facts=facts
            )
        request = run.input
    if postmortem is not None and _insert_once(runtime, postmortem):
        POSTMORTEMS.labels(message.status).inc()
    refresh_learning(runtime, message.run_id)
    _mark_processed(runtime, CONSUMER, message.id)
    if runtime.settings.review_enabled:
        with runtime.db.session() as session:
            pm = session.scalars(
                select(PostMortem).where(PostMortem.run_id == message.run_id)
            ).one()
            pending = pm.review is None
            postmortem_id, facts = pm.id, pm.facts
        if pending:
            _add_review(runtime, postmortem_id, facts, request)
    return True


def _insert_once(runtime: Runtime, row: Any) -> bool:
    try:
        with runtime.db.session() as session:
            session.add(row)
        return True
    except IntegrityError:
        return False  # a concurrent delivery wrote it first


def _mark_processed(runtime: Runtime, consumer: str, event_id: str) -> None:
    _insert_once(runtime, ProcessedEvent(consumer=consumer, event_id=event_id))


def refresh_learning(runtime: Runtime, run_id: str, attempts: int = 5) -> None:
    """Upsert the run's outcome and recompute its tenant x class statistics. Concurrent
    refreshes of one tenant x class are serialised (advisory lock on PostgreSQL; SQLite has
    one writer anyway), and a lost race is simply redone."""
    for attempt in range(attempts):
        try:
            with runtime.db.session() as session:
                run = session.get(Run, run_id)
                if run is None:
                    return
                request_class = run.request_class or classify(run.input)
                if runtime.db.is_postgres:
                    key = zlib.crc32(f"{run.tenant_id}:{request_class}".encode())
                    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
                outcome = upsert_outcome(session, run)
                recompute_stats(session, run.tenant_id, outcome.request_class)
            return
        except IntegrityError:
            if attempt == attempts - 1:
                raise
            log.info("learning refresh of %s raced; redoing it", run_id)


def _add_review(runtime: Runtime, postmortem_id: str, facts: dict[str, Any], request: str) -> None:
    # Outside the facts' transaction: a slow or failing LLM must not hold or lose them.
    settings = runtime.settings
    try:
        # Built once per process: building the simulated provider parses its YAML script.
        provider = shared_provider(settings, settings.llm_provider)
        result = review(provider, settings.llm_model, facts, request)
    except Exception as exc:  # never lose the post-mortem over its review
        log.warning("post-mortem review failed: %s", exc)
        result = {"error": f"review failed: {type(exc).__name__}"}
    with runtime.db.session() as session:
        session.execute(
            update(PostMortem).where(PostMortem.id == postmortem_id).values(review=result)
        )


def apply_feedback(runtime: Runtime, message: FeedbackReceived) -> bool:
    """Attribute a rating to its run's decisions: outcome, statistics, retention flag."""
    with runtime.db.session() as session:
        if session.get(ProcessedEvent, (FEEDBACK_CONSUMER, message.id)) is not None:
            return False
        if session.get(Run, message.run_id) is None:
            return False
        session.execute(
            update(OrchestrationContext)
            .where(OrchestrationContext.run_id == message.run_id)
            .values(has_feedback=True)
        )
    refresh_learning(runtime, message.run_id)
    _mark_processed(runtime, FEEDBACK_CONSUMER, message.id)
    return True
