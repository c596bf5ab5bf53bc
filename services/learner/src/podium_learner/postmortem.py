"""Post-mortems for finished runs and the effect of user feedback (docs/architecture.md,
"Learning").

Post-mortems are written in batches: the run-completed events that the learner's consumer
threads hold at one moment are read with one query per table and written in one transaction
(facts, outcomes, the statistics of each tenant x class once, the events marked processed).
The LLM review is sampled: always for a failed or cancelled run, for a share of the others
(``PODIUM_REVIEW_SAMPLE_RATE``, 10 % by default, chosen by the run's id so a redelivery
decides the same), and for a run rated poorly later (``apply_feedback``).

Both consumers deduplicate by event id (processed_events), and every write is an upsert or
an insert that ignores a row already there, so at-least-once delivery is harmless."""

from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

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
    new_id,
    utcnow,
)
from podium_learner.outcomes import (
    dialect_insert,
    outcome_inputs,
    read_outcome_inputs,
    refresh_outcomes,
)
from podium_learner.review import review

log = logging.getLogger(__name__)

CONSUMER = "learner.run_completed"
FEEDBACK_CONSUMER = "learner.feedback_received"
# A rating at or below this asks for a review of a run that was sampled out.
POOR_RATING = 2
_ALWAYS_REVIEWED = frozenset({"failed", "cancelled"})


def measured_facts(run: Any, calls: Sequence[Any], decisions: Sequence[Any]) -> dict[str, Any]:
    """The facts of one run, from its row and the rows of its calls and decisions."""

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


def review_sampled(run_id: str, status: str, rate: float) -> bool:
    """Whether a run gets an LLM review when it ends: always when it failed or was
    cancelled, otherwise for ``rate`` of the runs, chosen by the run's id (stable across
    redeliveries and processes)."""
    if status in _ALWAYS_REVIEWED:
        return True
    return zlib.crc32(run_id.encode()) % 10_000 < round(rate * 10_000)


@dataclass(frozen=True)
class ReviewDue:
    """A post-mortem whose LLM review is to be written, after the facts committed."""

    postmortem_id: str
    facts: dict[str, Any]
    request: str


# Per event id: None if the event was already processed (or its run is unknown), else the
# review to write (or False when the run is not reviewed).
BatchResult = dict[str, ReviewDue | bool | None]


def record_postmortems(runtime: Runtime, messages: Sequence[RunCompleted]) -> BatchResult:
    """Write the post-mortems of a batch of run-completed events, refresh what the learner
    knows from them, and say which reviews are due. Two transactions for the whole batch:
    one read, one write."""
    settings = runtime.settings
    result: BatchResult = {m.id: None for m in messages}
    with runtime.db.read() as session:
        done = set(
            session.scalars(
                select(ProcessedEvent.event_id).where(
                    ProcessedEvent.consumer == CONSUMER,
                    ProcessedEvent.event_id.in_([m.id for m in messages]),
                )
            )
        )
        todo = [m for m in messages if m.id not in done]
        run_ids = sorted({m.run_id for m in todo})
        if not run_ids:
            return result
        conn = session.connection()
        runs = {r.id: r for r in conn.execute(select(Run.__table__).where(Run.id.in_(run_ids)))}
        existing = {
            r.run_id: r
            for r in conn.execute(
                select(PostMortem.id, PostMortem.run_id, PostMortem.facts, PostMortem.review).where(
                    PostMortem.run_id.in_(run_ids)
                )
            )
        }
        found = [r for r in run_ids if r in runs]
        new_runs = [r for r in found if r not in existing]
        # Calls and decisions of every run found: the facts of the new post-mortems, and
        # the inputs of every outcome (read once, here, rather than again when writing).
        call_rows = conn.execute(
            select(AgentCall.__table__)
            .where(AgentCall.run_id.in_(found))
            .order_by(AgentCall.created_at)
        ).all()
        decision_rows = conn.execute(
            select(OrchestrationDecision.__table__)
            .where(OrchestrationDecision.run_id.in_(found))
            .order_by(OrchestrationDecision.seq)
        ).all()
    calls: dict[str, list[Any]] = defaultdict(list)
    decisions: dict[str, list[Any]] = defaultdict(list)
    for row in call_rows:
        calls[row.run_id].append(row)
    for row in decision_rows:
        decisions[row.run_id].append(row)
    inputs = outcome_inputs([runs[r] for r in found], call_rows, decision_rows)
    for message in todo:
        if message.run_id not in runs:
            log.warning("run.completed for unknown run %s", message.run_id)
    postmortems: dict[str, dict[str, Any]] = {}
    first_event = {m.run_id: m.id for m in reversed(todo)}
    for run_id in new_runs:
        run = runs[run_id]
        postmortems[run_id] = {
            "id": new_id(),
            "tenant_id": run.tenant_id,
            "run_id": run_id,
            "event_id": first_event[run_id],
            "facts": measured_facts(run, calls[run_id], decisions[run_id]),
            "created_at": utcnow(),
        }
    known = [m for m in todo if m.run_id in runs]
    is_postgres = runtime.db.is_postgres
    insert = dialect_insert(is_postgres)
    with runtime.db.session() as session:
        if postmortems:
            # A concurrent delivery of the same run's event may have written it first.
            session.execute(
                insert(PostMortem).on_conflict_do_nothing(index_elements=[PostMortem.run_id]),
                list(postmortems.values()),
            )
        outcomes = refresh_outcomes(session, inputs, is_postgres=is_postgres)
        session.execute(
            insert(ProcessedEvent).on_conflict_do_nothing(),
            [{"consumer": CONSUMER, "event_id": m.id, "processed_at": utcnow()} for m in todo],
        )
    for message in known:
        POSTMORTEMS.labels(message.status).inc()
        run = runs[message.run_id]
        written = postmortems.get(message.run_id)
        if written is not None:
            pm_id, facts, reviewed = written["id"], written["facts"], False
        else:
            row = existing[message.run_id]
            pm_id, facts, reviewed = row.id, row.facts, row.review is not None
        # Rated before its post-mortem was written: a poor rating asks for the review too.
        rating = outcomes.get(run.id, {}).get("mean_rating")
        wanted = (
            settings.review_enabled
            and not reviewed
            and (
                review_sampled(run.id, run.status, settings.review_sample_rate)
                or (rating is not None and rating <= POOR_RATING)
            )
        )
        result[message.id] = ReviewDue(pm_id, facts, run.input) if wanted else False
    # Several events of one run in the batch: the review is written once.
    reviewing: set[str] = set()
    for event_id, entry in result.items():
        if isinstance(entry, ReviewDue):
            if entry.postmortem_id in reviewing:
                result[event_id] = False
            reviewing.add(entry.postmortem_id)
    return result


def add_review(runtime: Runtime, due: ReviewDue) -> None:
    """Write the LLM review of a post-mortem. Outside the facts' transaction: a slow or
    failing LLM must not hold or lose them. A review already there is kept."""
    settings = runtime.settings
    try:
        # Built once per process: building the simulated provider parses its YAML script.
        provider = shared_provider(settings, settings.llm_provider)
        result = review(provider, settings.llm_model, due.facts, due.request)
    except Exception as exc:  # never lose the post-mortem over its review
        log.warning("post-mortem review failed: %s", exc)
        result = {"error": f"review failed: {type(exc).__name__}"}
    with runtime.db.session() as session:
        session.execute(
            update(PostMortem)
            .where(PostMortem.id == due.postmortem_id, PostMortem.review.is_(None))
            .values(review=result)
        )


def apply_feedback(runtime: Runtime, message: FeedbackReceived) -> bool:
    """Attribute a rating to its run's decisions: outcome, statistics, retention flag; a
    poor rating of a run whose review was sampled out asks for its review."""
    is_postgres = runtime.db.is_postgres
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
        inputs = read_outcome_inputs(session, [message.run_id])
        refresh_outcomes(session, inputs, is_postgres=is_postgres)
        session.execute(
            dialect_insert(is_postgres)(ProcessedEvent).on_conflict_do_nothing(),
            [{"consumer": FEEDBACK_CONSUMER, "event_id": message.id, "processed_at": utcnow()}],
        )
        unreviewed = None
        if message.rating <= POOR_RATING and runtime.settings.review_enabled:
            unreviewed = session.execute(
                select(PostMortem.id, PostMortem.facts, Run.input)
                .join(Run, Run.id == PostMortem.run_id)
                .where(PostMortem.run_id == message.run_id, PostMortem.review.is_(None))
            ).first()
    if unreviewed is not None:
        add_review(runtime, ReviewDue(unreviewed[0], unreviewed[1], unreviewed[2]))
    return True
