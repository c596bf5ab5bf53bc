"""Run outcomes and the statistics recomputed from them (docs/architecture.md, "Learning").

Statistics are recomputed from the outcomes of a tenant x class rather than incremented, so a
redelivered or replayed event cannot count twice."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, case, cast, delete, func, select
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
)


def upsert_outcome(session: Session, run: Run) -> RunOutcome:
    """The run's outcome row, created or refreshed from the store (idempotent)."""
    outcome = session.get(RunOutcome, run.id)
    agents = sorted(
        {a for (a,) in session.execute(select(AgentCall.agent).where(AgentCall.run_id == run.id))}
    )
    count, mean = session.execute(
        select(func.count(Feedback.id), func.avg(Feedback.rating)).where(Feedback.run_id == run.id)
    ).one()
    policy = session.scalars(
        select(OrchestrationDecision).where(
            OrchestrationDecision.run_id == run.id,
            OrchestrationDecision.source == DecisionSource.POLICY.value,
        )
    ).first()
    latency = (run.finished_at - run.created_at).total_seconds() * 1000 if run.finished_at else 0.0
    values: dict[str, Any] = {
        "request_class": run.request_class or classify(run.input),
        "pattern": run.pattern or DEFAULT_PATTERN,
        "agents": agents,
        "status": run.status,
        "feedback_count": int(count or 0),
        "mean_rating": float(mean) if mean is not None else None,
        "cost_usd": float(run.cost_usd or 0.0),
        "latency_ms": latency,
        "overruled_from": Decision.from_row(policy).dimensions.overruled if policy else None,
    }
    values["good"] = is_good(run.status, values["mean_rating"])
    if outcome is None:
        outcome = RunOutcome(run_id=run.id, tenant_id=run.tenant_id, **values)
        session.add(outcome)
    else:
        for key, value in values.items():
            setattr(outcome, key, value)
    session.flush()
    return outcome


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
