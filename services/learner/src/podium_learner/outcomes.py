"""Run outcomes and the statistics recomputed from them (docs/architecture.md, "Learning").

Statistics are recomputed from the outcomes of a tenant x class rather than incremented, so a
redelivered or replayed event cannot count twice."""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, case, cast, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from podium.decisions import Decision, DecisionSource
from podium.learning import classify, is_good
from podium.patterns import DEFAULT_PATTERN
from podium.store import (
    AgentCall,
    Feedback,
    LearningStat,
    OrchestrationDecision,
    Run,
    RunOutcome,
    utcnow,
)


@dataclass(frozen=True)
class OutcomeInput:
    """What a run's outcome is made of, besides its ratings: the run's row (id, tenant_id,
    request_class, input, pattern, status, cost_usd, created_at, finished_at), its agents,
    and the pattern a learned policy overruled for it. None of it changes once the run
    ended, so it may be read before the transaction that writes the outcome."""

    run: Any
    agents: frozenset[str]
    overruled_from: str | None


def outcome_inputs(
    runs: Sequence[Any], calls: Sequence[Any], decisions: Sequence[Any]
) -> list[OutcomeInput]:
    """The inputs of ``runs``' outcomes, from rows already read: their calls (``run_id``,
    ``agent``) and decisions (rows of ``orchestration_decisions``, oldest first)."""
    agents: dict[str, set[str]] = defaultdict(set)
    for call in calls:
        agents[call.run_id].add(call.agent)
    overruled: dict[str, str | None] = {}
    for row in decisions:
        if row.source == DecisionSource.POLICY.value:
            overruled.setdefault(row.run_id, Decision.from_row(row).dimensions.overruled)
    return [
        OutcomeInput(run, frozenset(agents.get(run.id, ())), overruled.get(run.id)) for run in runs
    ]


def read_outcome_inputs(session: Session, run_ids: Sequence[str]) -> list[OutcomeInput]:
    """The inputs of the outcomes of ``run_ids`` (runs not found are left out): three
    queries for any number of runs."""
    ids = sorted(set(run_ids))
    if not ids:
        return []
    runs = session.execute(select(Run.__table__).where(Run.id.in_(ids))).all()
    calls = session.execute(
        select(AgentCall.run_id, AgentCall.agent).where(AgentCall.run_id.in_(ids))
    ).all()
    decisions = session.execute(
        select(OrchestrationDecision.__table__)
        .where(
            OrchestrationDecision.run_id.in_(ids),
            OrchestrationDecision.source == DecisionSource.POLICY.value,
        )
        .order_by(OrchestrationDecision.seq)
    ).all()
    return outcome_inputs(runs, calls, decisions)


def refresh_outcomes(
    session: Session, inputs: Sequence[OutcomeInput], *, is_postgres: bool
) -> dict[str, dict[str, Any]]:
    """Create or refresh the outcome rows of the runs of ``inputs``, with their ratings as
    they stand, then recompute the statistics of every tenant x class they belong to
    (idempotent). Returns the outcomes written, by run id.

    A few statements for the whole batch: the ratings read with one query, the outcomes
    written with one upsert, each tenant x class recomputed once. Concurrent refreshes of one
    tenant x class are serialised (advisory locks on PostgreSQL, taken in one order, before
    the ratings are read; SQLite has one writer)."""
    if not inputs:
        return {}
    classes = {i.run.id: i.run.request_class or classify(i.run.input) for i in inputs}
    groups = sorted({(i.run.tenant_id, classes[i.run.id]) for i in inputs})
    if is_postgres:
        for tenant_id, request_class in groups:
            key = zlib.crc32(f"{tenant_id}:{request_class}".encode())
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    ids = sorted(classes)
    ratings = {
        run_id: (int(count or 0), float(mean) if mean is not None else None)
        for run_id, count, mean in session.execute(
            select(Feedback.run_id, func.count(Feedback.id), func.avg(Feedback.rating))
            .where(Feedback.run_id.in_(ids))
            .group_by(Feedback.run_id)
        )
    }
    rows = []
    for item in inputs:
        run = item.run
        count, mean = ratings.get(run.id, (0, None))
        latency = (
            (run.finished_at - run.created_at).total_seconds() * 1000 if run.finished_at else 0.0
        )
        rows.append(
            {
                "run_id": run.id,
                "tenant_id": run.tenant_id,
                "request_class": classes[run.id],
                "pattern": run.pattern or DEFAULT_PATTERN,
                "agents": sorted(item.agents),
                "status": run.status,
                "feedback_count": count,
                "mean_rating": mean,
                "cost_usd": float(run.cost_usd or 0.0),
                "latency_ms": latency,
                "overruled_from": item.overruled_from,
                "good": is_good(run.status, mean),
            }
        )
    upsert = dialect_insert(is_postgres)(RunOutcome)
    refreshed: dict[str, Any] = {
        k: upsert.excluded[k] for k in rows[0] if k not in ("run_id", "tenant_id")
    }
    refreshed["updated_at"] = utcnow()
    session.execute(
        upsert.on_conflict_do_update(index_elements=[RunOutcome.run_id], set_=refreshed), rows
    )
    for tenant_id, request_class in groups:
        recompute_stats(session, tenant_id, request_class)
    return {row["run_id"]: row for row in rows}


def dialect_insert(is_postgres: bool) -> Any:
    """The backend's INSERT, which knows ON CONFLICT (both spell it the same way)."""
    return postgresql_insert if is_postgres else sqlite_insert


@dataclass
class _Totals:
    """Sums over some outcomes, from which the statistics' means follow."""

    samples: int = 0
    good: int = 0
    completed: int = 0
    feedback_count: int = 0
    rated: int = 0
    rating_sum: float = 0.0
    cost_sum: float = 0.0
    latency_sum: float = 0.0

    def add(self, row: Any) -> None:
        self.samples += int(row.samples)
        self.good += int(row.good or 0)
        self.completed += int(row.completed or 0)
        self.feedback_count += int(row.feedback_count or 0)
        self.rated += int(row.rated or 0)
        self.rating_sum += float(row.rating_sum or 0.0)
        self.cost_sum += float(row.cost_sum or 0.0)
        self.latency_sum += float(row.latency_sum or 0.0)


def recompute_stats(session: Session, tenant_id: str, request_class: str) -> None:
    """Rebuild the tenant x class rows of learning_stats from run_outcomes.

    The database sums the outcomes, grouped by pattern and by agent list, so a refresh costs
    one aggregate per dimension instead of loading every outcome of the class."""
    sums = (
        func.count().label("samples"),
        func.sum(case((RunOutcome.good, 1), else_=0)).label("good"),
        func.sum(case((RunOutcome.status == "completed", 1), else_=0)).label("completed"),
        func.sum(RunOutcome.feedback_count).label("feedback_count"),
        func.count(RunOutcome.mean_rating).label("rated"),
        func.sum(RunOutcome.mean_rating).label("rating_sum"),
        func.sum(RunOutcome.cost_usd).label("cost_sum"),
        func.sum(RunOutcome.latency_ms).label("latency_sum"),
    )
    scope = (RunOutcome.tenant_id == tenant_id, RunOutcome.request_class == request_class)
    groups: dict[tuple[str, str], _Totals] = defaultdict(_Totals)
    for row in session.execute(
        select(RunOutcome.pattern.label("key"), *sums).where(*scope).group_by(RunOutcome.pattern)
    ):
        groups[("pattern", row.key)].add(row)
    # Grouped by the stored JSON text of the agent list (one writer, one serialisation), then
    # split: a run with two agents counts once for each.
    agents_text = cast(RunOutcome.agents, String)
    for row in session.execute(
        select(agents_text.label("key"), *sums).where(*scope).group_by(agents_text)
    ):
        for agent in sorted(set(json.loads(row.key or "[]"))):
            groups[("agent", str(agent))].add(row)
    session.execute(
        delete(LearningStat).where(
            LearningStat.tenant_id == tenant_id, LearningStat.request_class == request_class
        )
    )
    for (dimension, value), t in sorted(groups.items()):
        session.add(
            LearningStat(
                tenant_id=tenant_id,
                request_class=request_class,
                dimension=dimension,
                value=value,
                samples=t.samples,
                good=t.good,
                completed=t.completed,
                feedback_count=t.feedback_count,
                mean_rating=t.rating_sum / t.rated if t.rated else None,
                mean_cost_usd=t.cost_sum / t.samples,
                mean_latency_ms=t.latency_sum / t.samples,
            )
        )
    session.flush()
