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


def refresh_outcomes(
    session: Session, run_ids: Sequence[str], *, is_postgres: bool
) -> dict[str, dict[str, Any]]:
    """Create or refresh the outcome rows of ``run_ids`` from the store, then recompute the
    statistics of every tenant x class they belong to (idempotent). Returns the outcomes
    written, by run id (runs not found are left out).

    A few statements for the whole batch: the runs, their agents, ratings and policy
    decisions are read with one query each, the outcomes written with one upsert, and each
    tenant x class recomputed once. Concurrent refreshes of one tenant x class are
    serialised (advisory locks on PostgreSQL, taken in one order; SQLite has one writer)."""
    if not run_ids:
        return {}
    ids = sorted(set(run_ids))
    runs = session.execute(
        select(
            Run.id,
            Run.tenant_id,
            Run.request_class,
            Run.input,
            Run.pattern,
            Run.status,
            Run.cost_usd,
            Run.created_at,
            Run.finished_at,
        ).where(Run.id.in_(ids))
    ).all()
    if not runs:
        return {}
    classes = {r.id: r.request_class or classify(r.input) for r in runs}
    groups = sorted({(r.tenant_id, classes[r.id]) for r in runs})
    if is_postgres:
        for tenant_id, request_class in groups:
            key = zlib.crc32(f"{tenant_id}:{request_class}".encode())
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    agents: dict[str, set[str]] = defaultdict(set)
    for run_id, agent in session.execute(
        select(AgentCall.run_id, AgentCall.agent).where(AgentCall.run_id.in_(ids))
    ):
        agents[run_id].add(agent)
    ratings = {
        run_id: (int(count or 0), float(mean) if mean is not None else None)
        for run_id, count, mean in session.execute(
            select(Feedback.run_id, func.count(Feedback.id), func.avg(Feedback.rating))
            .where(Feedback.run_id.in_(ids))
            .group_by(Feedback.run_id)
        )
    }
    overruled: dict[str, str | None] = {}
    for row in session.execute(
        select(OrchestrationDecision.__table__)
        .where(
            OrchestrationDecision.run_id.in_(ids),
            OrchestrationDecision.source == DecisionSource.POLICY.value,
        )
        .order_by(OrchestrationDecision.seq)
    ):
        overruled.setdefault(row.run_id, Decision.from_row(row).dimensions.overruled)
    rows = []
    for run in runs:
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
                "agents": sorted(agents.get(run.id, ())),
                "status": run.status,
                "feedback_count": count,
                "mean_rating": mean,
                "cost_usd": float(run.cost_usd or 0.0),
                "latency_ms": latency,
                "overruled_from": overruled.get(run.id),
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
